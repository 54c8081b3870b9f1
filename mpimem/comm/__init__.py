"""mpimem.comm: the compiled MPI loops (segments of rounds) and what they call.

May import: mpimem.core, mpimem.errors (checked by import-linter, pyproject.toml).
"""
