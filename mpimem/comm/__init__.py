"""mpimem.comm: the compiled MPI loops (segments of many rounds) and what they call.

MPI from compiled code (mpicall), the segments of the sync server and allgather (segments),
the tree topologies (tree), the asynchronous server and workers (async_segments), and how the
benchmarks launch mpiexec (launch).

May import: mpimem.core, mpimem.errors (checked by import-linter, pyproject.toml).
"""
