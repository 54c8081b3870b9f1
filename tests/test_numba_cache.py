"""numba's cache does not notice that a function it loads calls a changed function of another
file: mpimem names its cache directory after a digest of the compiled modules
(mpimem/_numba_cache.py), so an update of mpimem.kernels can never run against stale
compiled callers in mpimem.step."""
import shutil
import subprocess
import sys
from pathlib import Path

import mpimem

PACKAGE = Path(mpimem.__file__).parent


def cache_dir(root, base):
    out = subprocess.run([sys.executable, "-c", "import mpimem, os; print(os.environ['NUMBA_CACHE_DIR'])"],
                         cwd=root, env={"PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(base),
                                        "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_cache_directory_follows_the_compiled_sources(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "mpimem", ignore=shutil.ignore_patterns("__pycache__"))
    base = tmp_path / "cache"
    first = cache_dir(root, base)
    assert Path(first).parent == base and Path(first).name.startswith("numba-")
    with open(root / "mpimem" / "checkpoint.py", "a") as fh:   # no compiled code in it
        fh.write("\n# an edit\n")
    assert cache_dir(root, base) == first
    with open(root / "mpimem" / "kernels.py", "a") as fh:      # a callee of mpimem.step
        fh.write("\n# an edit\n")
    assert cache_dir(root, base) != first
