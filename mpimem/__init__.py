"""mpimem: Sparsified SGD with Memory (Mem-SGD) over MPI.

See README.md for the user guide and ../shared/SPEC.md (restated in docs/) for the math.
"""
__version__ = "0.1.0"
