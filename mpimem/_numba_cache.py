"""Where numba keeps mpimem's compiled functions: one directory per version of the sources.

numba's on-disk cache checks only the source file of the function it loads, not the files of
the functions it calls: after an update of mpimem.kernels, a cached mpimem.step function would
still run the old kernel, silently. So the cache directory is named after a digest of every
module of the package that holds compiled code (`numba-<digest>` under $NUMBA_CACHE_DIR, or under the package's
__pycache__ when that is unset): changed sources mean a fresh directory. It must run before
numba is imported (mpimem/__init__.py calls it first).
"""
import hashlib
import os
import sys


def use_versioned_cache() -> str:
    """Point NUMBA_CACHE_DIR at the directory of this version of the sources; returns it."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(here)):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as fh:
                    text = fh.read()
                if b"njit" in text or b"numba" in text:   # the modules with compiled code
                    digest.update(name.encode() + b"\0" + text)
    base = os.environ.get("MPIMEM_NUMBA_CACHE_BASE") or os.environ.get("NUMBA_CACHE_DIR") \
        or os.path.join(here, "__pycache__")
    os.environ["MPIMEM_NUMBA_CACHE_BASE"] = base   # child processes derive from the same base
    path = os.path.join(base, "numba-" + digest.hexdigest()[:16])
    os.environ["NUMBA_CACHE_DIR"] = path
    numba = sys.modules.get("numba")
    if numba is not None:   # imported before mpimem: numba reads the setting at decoration
        numba.config.CACHE_DIR = path
    return path
