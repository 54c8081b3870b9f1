"""mpimem.data: data sets: LIBSVM conversion, synthetic look-alikes, the HDF5 layout (write,
validate, read shards), row checksums, f* (docs/data.md). The commands are mpimem.cli.data.

May import: mpimem.core and the root modules (checked by import-linter, pyproject.toml).
"""
