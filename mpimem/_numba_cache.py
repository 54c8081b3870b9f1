"""Where numba keeps mpimem's compiled functions, and how a first run fills it.

One directory per version of the sources and per CPU, the same whichever way mpimem is started
(`make`, an activated venv, `sbatch`, another user):

    <base>/<cpu>/numba-<digest>/

* digest: every module of the package that holds compiled code, numba's version and Python's.
  numba's on-disk cache checks only the source file of the function it loads, not the files of
  the functions it calls: after an update of mpimem.core.kernels, a cached mpimem.core.step function would
  still run the old kernel, silently; changed sources mean a fresh directory.
* cpu: the CPU model and a hash of its feature flags (and NUMBA_CPU_NAME/NUMBA_CPU_FEATURES):
  numba compiles for the host CPU, so a compute node whose CPU differs from the login node's
  compiles its own directory, once.
* base: $MPIMEM_CACHE_DIR, else $NUMBA_CACHE_DIR, else `<sys.prefix>/var/cache/mpimem` (the
  install's cache, beside the venv or installation that holds mpimem; `make install` fills it
  with `python -m mpimem.cli.warm`). When the install's directory cannot be written (a shared
  install run by another user, read-only site-packages) it is read in place if it is complete
  (its marker file `complete`, written by mpimem.cli.warm), otherwise mpimem compiles into the
  user's cache: $XDG_CACHE_HOME/mpimem, else ~/.cache/mpimem (HOME set and writable), else
  $TMPDIR/mpimem-<uid>.

A process that is about to import numba while its directory is not complete compiles every
kernel first (mpimem.cli.warm, in a child process) under an exclusive lock of the directory
(`.lock`, flock): the ranks of a node do not all compile at once, one compiles and the others
wait and then load; rank 0 says so on stderr in one line. numba's cache is made robust here
too: mpimem's functions get their own locator (numba's own would refuse a directory it cannot
write: "cannot cache function ...: no locator available"), a damaged cache file (a truncated
.nbi/.nbc: UnpicklingError, EOFError) is compiled again and rewritten, and a failed save (read-only, full
disk) keeps the compiled code of this process.

setup() must run before numba is imported (mpimem/__init__.py calls it first).
"""
import errno
import hashlib
import os
import platform
import re
import sys
import time

MARKER = "complete"            # written by mpimem.cli.warm after every kernel is compiled
LOCK = ".lock"
WARM_SECONDS = 90              # printed estimate of a full compile (measured: mpimem.cli.warm)
ENV_WARMING = "MPIMEM_WARMING"          # set in the warm child: no recursion
ENV_NO_WARM = "MPIMEM_NO_WARM"          # 1: never compile ahead (each function when first used)

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = {}                     # dir, readonly, note: set by setup()
COMPILED = re.compile(rb"^[ \t]*(?:from numba[ .]|import numba\b)", re.M)


def source_digest() -> str:
    """Digest of the compiled modules' sources, numba's version and Python's ABI tag."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(HERE)):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as fh:
                    text = fh.read()
                if COMPILED.search(text):   # the modules with compiled code: they import numba
                    rel = os.path.relpath(os.path.join(folder, name), HERE)
                    digest.update(rel.encode() + b"\0" + text)
    digest.update(f"\0numba {_numba_version()}\0{sys.implementation.cache_tag}".encode())
    return digest.hexdigest()[:16]


def _numba_version() -> str:
    try:
        from importlib.metadata import version
        return version("numba")
    except Exception:   # not installed as a distribution: the sources alone
        return "?"


def cpu_tag() -> str:
    """`<model>-<hash>`: the CPU model (sanitised) and a hash of its flags, of the machine and of
    numba's CPU overrides; two hosts with the same tag get the same code from numba."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = os.environ.get("NUMBA_CPU_NAME") or info.get("model name") or info.get("cpu model") \
        or info.get("Processor") or platform.processor() or platform.machine() or "cpu"
    flags = info.get("flags") or info.get("Features") or info.get("isa") or ""
    extra = "|".join([platform.machine(), model, flags, os.environ.get("NUMBA_CPU_NAME", ""),
                      os.environ.get("NUMBA_CPU_FEATURES", "")])
    name = "-".join("".join(c if c.isalnum() else " " for c in model).split()) or "cpu"
    return f"{name[:48]}-{hashlib.sha256(extra.encode()).hexdigest()[:8]}"


def install_base() -> str:
    return os.environ.get("MPIMEM_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR") \
        or os.path.join(sys.prefix, "var", "cache", "mpimem")


def user_bases() -> list:
    """The user-writable fallbacks, in order."""
    out = []
    if os.environ.get("XDG_CACHE_HOME"):
        out.append(os.path.join(os.environ["XDG_CACHE_HOME"], "mpimem"))
    home = os.environ.get("HOME")
    if home and os.path.isdir(home) and os.access(home, os.W_OK):
        out.append(os.path.join(home, ".cache", "mpimem"))
    tmp = os.environ.get("TMPDIR") or "/tmp"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    out.append(os.path.join(tmp, f"mpimem-{uid}"))
    return out


def _writable(path) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def is_complete(path) -> bool:
    return os.path.exists(os.path.join(path, MARKER))


def choose() -> dict:
    """The directory this process uses: {dir, readonly, note} (module docstring)."""
    sub = os.path.join(cpu_tag(), "numba-" + source_digest())
    primary = os.path.join(install_base(), sub)
    if _writable(primary):
        return dict(dir=primary, readonly=False, note="")
    if is_complete(primary):
        return dict(dir=primary, readonly=True, note="")
    for base in user_bases():
        path = os.path.join(base, sub)
        if _writable(path):
            return dict(dir=path, readonly=False,
                        note=f"the install's cache {os.path.dirname(primary)} is not writable; "
                             f"compiled code goes to {base}")
    return dict(dir=primary, readonly=True,
                note="no writable cache directory: compiled code is not kept")


def setup() -> str:
    """Choose the directory, and hook numba's import (cache robustness, compile ahead); returns
    the directory. Idempotent."""
    if STATE:
        return STATE["dir"]
    STATE.update(choose())
    os.environ["MPIMEM_NUMBA_CACHE"] = STATE["dir"]   # where this process's code is (for info)
    caching = sys.modules.get("numba.core.caching")
    if caching is not None:   # numba imported before mpimem
        _patch(caching)
        ensure_compiled()
    else:
        sys.meta_path.insert(0, _Hook())
    return STATE["dir"]


def use_versioned_cache() -> str:   # the former name
    return setup()


# ---------------------------------------------------------------- compile ahead, once a node
def launch_rank() -> int:
    """This process's rank from the launcher's environment (no MPI call); 0 when alone."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
                 "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def ensure_compiled() -> None:
    """If this CPU's directory is not complete: one process at a time (flock) compiles every
    kernel (python -m mpimem.cli.warm) and the others, after it, load them."""
    path = STATE.get("dir")
    if not path or STATE["readonly"] or is_complete(path) or os.environ.get(ENV_WARMING) \
            or os.environ.get(ENV_NO_WARM) == "1":
        return
    import subprocess
    if launch_rank() == 0:
        where = f"; {STATE['note']}" if STATE["note"] else ""
        print(f"mpimem: compiling kernels for this CPU (about {WARM_SECONDS} s, once){where}",
              file=sys.stderr, flush=True)
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return
    try:
        _lock(fd)
        if not is_complete(path):
            env = dict(os.environ, **{ENV_WARMING: "1"})
            for name in ("PMI_FD", "PMI_PORT", "PMI_RANK", "PMI_SIZE", "PMIX_RANK"):
                env.pop(name, None)   # the child is no rank of this job
            subprocess.run([sys.executable, "-m", "mpimem.cli.warm", "--quiet"], env=env,
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        pass    # each function is then compiled when first used, as numba does by itself
    finally:
        os.close(fd)   # releases the lock


def _lock(fd) -> None:
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:   # a file system without flock (some parallel file systems)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def write_marker(path, seconds) -> None:
    tmp = os.path.join(path, f".{MARKER}.{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(f"compiled by mpimem.cli.warm in {seconds:.1f} s on {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 f" ({cpu_tag()}, numba {_numba_version()})\n")
    os.replace(tmp, os.path.join(path, MARKER))


# ---------------------------------------------------------------- numba's cache, hardened
class _Hook:
    """A meta-path entry that acts once when numba is first imported (compile ahead) and when
    numba.core.caching is (patch it), then leaves."""

    def find_spec(self, name, path=None, target=None):
        if name == "numba":
            ensure_compiled()
            return None
        if name != "numba.core.caching":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec


def _inside_package(py_file) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(py_file), HERE]) == HERE
    except ValueError:
        return False


def _patch(caching) -> None:
    if getattr(caching, "_mpimem_patched", False):
        return
    caching._mpimem_patched = True

    class MpimemLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """mpimem's files -> STATE['dir'], read-only allowed (no writability probe)."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(STATE["dir"], self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        def ensure_cache_path(self):
            if STATE["readonly"]:
                raise OSError(errno.EROFS, "mpimem: read-only cache", self._cache_path)
            os.makedirs(self._cache_path, exist_ok=True)

        @classmethod
        def from_function(cls, py_func, py_file):
            if not STATE or not os.path.exists(py_file) or not _inside_package(py_file):
                return None
            return cls(py_func, py_file)

    caching.CacheImpl._locator_classes.insert(0, MpimemLocator)
    load, save = caching.Cache.load_overload, caching.Cache.save_overload

    def load_overload(self, sig, target_context):
        try:
            return load(self, sig, target_context)
        except Exception:        # a damaged index or data file: compile again, rewrite it
            _discard(self)
            return None

    def save_overload(self, sig, data):
        for attempt in range(2):
            try:
                return save(self, sig, data)
            except OSError:      # read-only, full, gone: this process keeps its compiled code
                return None
            except Exception:    # a damaged index read back by the save: drop it, once
                if attempt:
                    return None
                _discard(self)
        return None

    caching.Cache.load_overload = load_overload
    caching.Cache.save_overload = save_overload


def _discard(cache) -> None:
    """Remove a function's index file (its data files are then unreferenced and rewritten)."""
    try:
        os.unlink(cache._cache_file._index_path)
    except (OSError, AttributeError):
        pass
