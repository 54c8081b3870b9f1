"""mpimem: Sparsified SGD with Memory (Mem-SGD) over MPI.

See README.md for the user guide and ../shared/SPEC.md (restated in docs/) for the math.
"""
__version__ = "0.1.0"

from mpimem._numba_cache import setup as _setup_numba_cache

_setup_numba_cache()   # before numba is imported: see mpimem/_numba_cache.py
