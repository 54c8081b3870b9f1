"""mpimem.run: one training run: configuration resolved for a world, set-up, the driver,
server state, checkpoints, the run file, signals, the simulator, run labels.

May import: mpimem.core, mpimem.comm, mpimem.data, the root modules (checked by
import-linter, pyproject.toml); never mpimem.cli.
"""
