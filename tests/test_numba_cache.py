"""mpimem's compiled-code cache (mpimem/_numba_cache.py): one directory per version of the
compiled sources and per CPU, whichever way mpimem is started; a damaged cache file is compiled
again, never a traceback."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mpimem

PACKAGE = Path(mpimem.__file__).parent
CLEAN = {"PATH": "/usr/bin:/bin"}


def cache_dir(root, env):
    out = subprocess.run([sys.executable, "-c",
                          "import mpimem._numba_cache as c; print(c.STATE['dir'])"],
                         cwd=root, env={"PYTHONPATH": str(root), **CLEAN, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_cache_directory_follows_the_compiled_sources_and_the_cpu(tmp_path):
    """numba does not notice that a cached caller's callee in another file changed: the
    directory is named after a digest of the compiled modules (an edit of mpimem.core.kernels moves
    it, one of checkpoint.py does not), and after the CPU (numba compiles for the host)."""
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "mpimem", ignore=shutil.ignore_patterns("__pycache__"))
    base = tmp_path / "cache"
    env = {"MPIMEM_CACHE_DIR": str(base)}
    first = cache_dir(root, env)
    assert Path(first).parent.parent == base and Path(first).name.startswith("numba-")
    assert cache_dir(root, {"NUMBA_CACHE_DIR": str(base)}) == first   # numba's own variable
    other_cpu = cache_dir(root, dict(env, NUMBA_CPU_NAME="skylake-avx512"))
    assert Path(other_cpu).parent != Path(first).parent
    assert Path(other_cpu).name == Path(first).name
    with open(root / "mpimem" / "run" / "checkpoint.py", "a") as fh:   # no compiled code in it
        fh.write("\n# an edit\n")
    assert cache_dir(root, env) == first
    with open(root / "mpimem" / "core" / "kernels.py", "a") as fh:  # a callee of mpimem.core.step
        fh.write("\n# an edit\n")
    assert cache_dir(root, env) != first


def test_one_location_whichever_way_mpimem_is_started(tmp_path):
    """Without any variable the cache is the install's (<sys.prefix>/var/cache/mpimem), from
    any working directory: `make`, an activated venv and sbatch share it."""
    here = cache_dir(PACKAGE.parent, {})
    elsewhere = subprocess.run([sys.executable, "-c",
                                "import mpimem._numba_cache as c; print(c.STATE['dir'])"],
                               cwd=tmp_path, env={**CLEAN, "PYTHONPATH": str(PACKAGE.parent)},
                               capture_output=True, text=True, timeout=60, check=True)
    assert elsewhere.stdout.strip() == here
    assert Path(here).is_relative_to(Path(sys.prefix) / "var" / "cache" / "mpimem")


def test_damaged_cache_files_are_compiled_again(tmp_path):
    """Truncated index (.nbi) and data (.nbc) files: old code died with
    `_pickle.UnpicklingError: pickle data was truncated`; now the command succeeds without a
    traceback, rewrites the entries, and the next run loads them."""
    base = tmp_path / "cache"
    env = dict(os.environ, MPIMEM_CACHE_DIR=str(base), NUMBA_CACHE_DIR=str(base),
               MPIMEM_NO_WARM="1", PYTHONUNBUFFERED="1")
    env.pop("MPIMEM_NUMBA_CACHE_BASE", None)   # the old code's inherited base
    cmd = [sys.executable, "-m", "mpimem", "data", "synth", "--like", "rcv1", "--n", "50",
           "--d", "100"]

    def synth(i):
        proc = subprocess.run([*cmd, str(tmp_path / f"d{i}.h5")], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    synth(0)
    files = sorted(base.rglob("*.nb[ic]"))
    assert files, "the first run filled the cache"
    for i, path in enumerate(files):   # every file damaged: half truncated, half garbage
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if i % 2 else b"\x80\x05garbage")
    synth(1)
    synth(2)
    for path in sorted(base.rglob("*.nbi")):   # rewritten: loadable again
        assert path.stat().st_size > 20
