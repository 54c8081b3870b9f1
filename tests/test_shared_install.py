"""A shared install: mpimem installed (and its cache compiled) by root, run by another user
(nobody, HOME unset) who cannot write the install or its cache. Old code died at import with
`RuntimeError: cannot cache function '_mix': no locator available`. Now the install's cache
is read in place when it is complete for this CPU, and otherwise the user compiles into a cache
of their own (here TMPDIR/mpimem-<uid>), with at most one line about it; never a traceback.

Needs root and setpriv (util-linux); /root may be closed to other users (the venv's python
links into it), so the test opens it for traversal (o+x) while it runs."""
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import MPIEXEC, MPIEXEC_FLAGS, ROOT, run

NOBODY = 65534
pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to run mpimem as another user (nobody)")


@contextmanager
def traversable(paths):
    """o+x on every directory above the interpreter, the checkout and the venv, restored after."""
    changed = []
    try:
        for path in paths:
            for folder in [path, *path.parents]:
                mode = folder.stat().st_mode
                if folder.is_dir() and not mode & stat.S_IXOTH:
                    os.chmod(folder, mode | stat.S_IXOTH)
                    changed.append((folder, mode))
        yield
    finally:
        for folder, mode in reversed(changed):
            os.chmod(folder, mode)


def as_nobody(cmd, tmp, env, timeout=300):
    """cmd as uid/gid nobody, HOME unset, TMPDIR = tmp (writable by nobody), cwd tmp."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MPIMEM_", "NUMBA_", "XDG_")) and k != "HOME"}
    base.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1", **env)
    wrapped = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "env", "-u", "HOME", *cmd]
    proc = run(wrapped, timeout=timeout, cwd=str(tmp), env=base)
    return proc


def train(eps, out, ranks):
    args = [sys.executable, "-m", "mpimem", "train", eps, "--out", out, "--quiet",
            "--topology", "allgather", "--epochs", "0.2"]
    return args if ranks == 1 else [MPIEXEC, *MPIEXEC_FLAGS, "-n", str(ranks), *args]


@pytest.fixture()
def shared(eps):
    """A scratch folder nobody can write in, a copy of the data set, and the cache base of an
    install (root-owned, 0755); outside pytest's 0700 base temp folder (which another pytest
    session may close again at any time)."""
    top = Path(tempfile.mkdtemp(prefix="mpimem-shared-"))
    try:
        os.chmod(top, 0o755)
        work = top / "work"
        work.mkdir()
        os.chmod(work, 0o777)
        data = work / "eps.h5"
        shutil.copy(eps, data)
        os.chmod(data, 0o644)
        install = top / "install-cache"
        install.mkdir()
        with traversable([Path(sys.executable), Path(sys.executable).resolve(), ROOT]):
            yield work, str(data), install
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _no_traceback(proc):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "no locator" not in text, text


def test_complete_install_cache_is_read_in_place(shared):
    """The install's own cache (<venv>/var/cache/mpimem, compiled by root: mpimem.cli.warm's
    marker) is read-only to nobody: single rank and mpiexec -n 2 run from it, write nothing and
    say nothing about compiling."""
    from mpimem import _numba_cache as cache

    work, data, _ = shared
    assert not cache.STATE["readonly"] and not cache.STATE["note"], cache.STATE
    folder = Path(cache.STATE["dir"])
    if not (folder / cache.MARKER).exists():   # the test process compiles ahead at import
        warm = run([sys.executable, "-m", "mpimem.cli.warm", "--quiet"], timeout=600)
        assert warm.returncode == 0, warm.stderr
    before = sorted(str(p) for p in folder.rglob("*"))
    for ranks in (1, 2):
        proc = as_nobody(train(data, f"run{ranks}.h5", ranks), work, {})
        _no_traceback(proc)
        assert "compiling" not in proc.stderr, proc.stderr
        assert (work / f"run{ranks}.h5").exists()
    assert sorted(str(p) for p in folder.rglob("*")) == before
    assert not (work / f"mpimem-{NOBODY}").exists()   # nothing compiled for nobody


def test_incomplete_install_cache_falls_back_to_the_users_cache(shared):
    """The install's cache holds nothing for this CPU and cannot be written: nobody compiles
    into TMPDIR/mpimem-<uid> (HOME unset), one line says where, and the run completes."""
    work, data, install = shared
    os.chmod(install, 0o755)
    env = dict(MPIMEM_CACHE_DIR=str(install), MPIMEM_NO_WARM="1")  # each function when first used
    proc = as_nobody(train(data, "run.h5", 1), work, env)
    _no_traceback(proc)
    own = work / f"mpimem-{NOBODY}"
    assert list(own.glob("*/numba-*/*/*.nbi")), "compiled into the user's cache"
    assert not list(install.iterdir())
    assert len([ln for ln in proc.stderr.splitlines() if "cache" in ln]) <= 1, proc.stderr
