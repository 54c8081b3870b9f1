"""The one output policy of every mpimem command that creates a file (README "Outputs").

- An existing regular file is refused unless the command was given --overwrite (one line,
  `mpimem: error: ...`, exit 2).
- A file that is not a regular file (a directory, a device such as /dev/null or /dev/full, a
  FIFO, a socket, a dangling symbolic link) is never replaced, even with --overwrite.
- The directory that will hold the file must exist and be writable (mpimem never creates the
  user's directories).
- The check runs before any work (`check_output`), and again where the file is put in place
  (`publish`): a new file is linked into place exclusively (link(2) fails if the name exists
  meanwhile: nothing is replaced without --overwrite, even under a race), a replacement is a
  rename over the old regular file. What is written goes to a temporary file next to the
  output first, so the output is the old file or the new one, never a mixture.

`mpimem train --out` (mpimem.run.runfile), `mpimem data convert|synth` (mpimem.data.h5write),
`mpimem export --csv --out`, `mpimem plot --out` and `python -m analysis.figures --out` all go
through here; `mpimem data optimum` writes into an existing data set by design and checks that
it is one (mpimem.data.optimum.check_dataset_file).
"""
import contextlib
import errno
import os
import stat

from mpimem.errors import MpimemError

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
         (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """'a directory', 'a character device', ... for a stat mode that is not a regular file."""
    for test, name in KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_dir(path: str, what: str = "") -> None:
    """The directory that will hold `path` exists and is writable."""
    label = f"{what} {path}".strip()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise MpimemError(f"{label}: cannot write output (output directory {directory} does not exist)")
    if not os.access(directory, os.W_OK):
        raise MpimemError(f"{label}: cannot write output (output directory {directory} is not writable)")


def check_output(path, overwrite: bool = False, what: str = "", exists_hint: str = None,
                 noun: str = "the file") -> bool:
    """Before any work: MpimemError (one line) unless `path` may be written under the policy
    (module docstring). Returns True when a regular file is there (it is then replaced, which
    only overwrite allows). what: how the command names the path ('--out'); noun, exists_hint:
    the refusal of an existing file reads '{what} {path}: {noun} exists; {exists_hint}'
    (default: give --overwrite to replace it)."""
    path = os.fspath(path)
    label = f"{what} {path}".strip()
    check_dir(path, what)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise MpimemError(f"{label}: cannot check it ({err.strerror or err})") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            raise MpimemError(f"{label}: is a symbolic link to nothing; mpimem replaces only "
                              f"regular files (remove the link, or name another file)") from None
    if stat.S_ISDIR(info.st_mode):
        raise MpimemError(f"{label}: is a directory; name a file inside it "
                          f"(e.g. {os.path.join(path, os.path.basename(path) or 'out')})")
    if not stat.S_ISREG(info.st_mode):
        raise MpimemError(f"{label}: is {kind_of(info.st_mode)}, not a regular file; mpimem "
                          f"never replaces one (not even with --overwrite)")
    if not overwrite:
        raise MpimemError(f"{label}: {noun} exists; " + (exists_hint or "give --overwrite to replace it"))
    return True


def temporary_name(path: str, tag: str = "tmp") -> str:
    """A temporary name next to `path` for this process: `.NAME.TAG-PID`."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{tag}-{os.getpid()}")


def publish(tmp: str, path, overwrite: bool = False, what: str = "", exists_hint: str = None) -> None:
    """Put the finished temporary file `tmp` in place as `path` under the policy: checked once
    more (a device or directory put there meanwhile is never replaced); without overwrite the
    name is taken exclusively (link(2), EEXIST if anything is there now), with overwrite a
    rename replaces the regular file. On any refusal or error `tmp` is removed, `path` is left
    as it is and MpimemError says why."""
    path = os.fspath(path)
    label = f"{what} {path}".strip()
    try:
        check_output(path, overwrite, what, exists_hint)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise MpimemError(f"{label}: the file exists (created while this command ran); " +
                              (exists_hint or "give --overwrite to replace it")) from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK, errno.ENOSYS):
                raise
            os.replace(tmp, path)   # a file system without hard links: checked just above
            return
        os.remove(tmp)
    except OSError as err:
        raise MpimemError(f"{label}: cannot write output ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.remove(tmp)


def write_output(path, data: bytes, overwrite: bool = False, what: str = "",
                 exists_hint: str = None) -> None:
    """Write `data` as the file `path` under the policy: checked, written to a temporary file
    next to it, then published (MpimemError, one line, on a refusal or an I/O error; `path` is
    then unchanged)."""
    check_output(path, overwrite, what, exists_hint)
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        label = f"{what} {os.fspath(path)}".strip()
        raise MpimemError(f"{label}: cannot write output ({err.strerror or err})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    publish(tmp, path, overwrite, what, exists_hint)
