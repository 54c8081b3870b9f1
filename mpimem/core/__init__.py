"""mpimem.core: the mathematics of Mem-SGD and EF21, compiled or not. No MPI, no files.

May import: mpimem.core and mpimem.errors only (checked by import-linter, pyproject.toml).
"""
