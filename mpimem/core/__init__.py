"""mpimem.core: the mathematics of Mem-SGD and EF21, compiled or not. No MPI, no files.

The objective (objective), the random streams (rng), the compression operators one module
each with their wire formats (operators/, wire), the compiled kernels and step functions of a
round (kernels, topk_index, step, layout), the replicated iterate and its lazy average (model),
step sizes and weights (schedule), evaluation sums and the divergence rule (metrics), and the
clock the step functions read (clock).

May import: mpimem.core and mpimem.errors only (checked by import-linter, pyproject.toml).
"""
