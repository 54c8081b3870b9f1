"""Checkpoints of a Mem-SGD run: write atomically, verify, resume (docs/checkpoints.md).

What a checkpoint holds (everything the trajectory depends on, so that a resumed run is
bit-identical to an uninterrupted one where the mode is deterministic): rank 0's
mpimem.run.server_state.ServerState (iterate x = s z, averager, downlink memory, async counters),
the round counter; per worker its WorkerState.state_dict() (error memory m, sampler, RNG
states, byte counters, timings); the metrics rows so far, the resolved configuration and the
data set's fingerprint. The top-k pool is derived from m and rebuilt on load.

Every mode checkpoints. Sync and --topology allgather at round boundaries; --mode async at
quiescent points (mpimem.run.async_driver: no message in flight), whose "round" is the updates
applied / W, a whole number. With allgather every rank is a worker (the checkpoint's worker w
is rank w - 1) and rank 0 also holds the ServerState.

File: <run>.ckpt/ckpt-<round>.h5, written by rank 0 only after the workers' states are
gathered (one buffer Gatherv, no pickled arrays). The file is built in memory (HDF5 core
driver) and written with plain file I/O as a temporary file that is fsync'ed and renamed, so a
full disk is a plain OSError and never a half-written HDF5 file (mpimem.run.runfile). The root
attribute sha256 covers every dataset (name, dtype, shape, bytes) and every other root
attribute, so truncation or a flipped bit is detected on load.

Ownership: every checkpoint carries its run's `run_id` (mpimem.run.runfile). A run's RUN.ckpt/
holds only its own checkpoints: a new run refuses (or, with --overwrite, removes) those of
another run; --resume RUN.h5 skips checkpoints of another run with a note. Pruning keeps the
newest K *verified* checkpoints of this run (the ones it wrote, or verified at start) and
deletes only older verified ones: a damaged or foreign file is never counted as kept nor
deleted, and the checkpoint just written is never deleted.

Control at round boundaries (the loops call `boundary`): a "sync point" is a round that is a
multiple of POLL_ROUNDS, a round-interval checkpoint, an evaluation round, or a round the loop
makes one (always=True: every boundary of --mode async, where every rank is already paused, and
the round after an allgather rank asked for it because `urgent()`). There every rank
contributes flags to one tiny Allreduce(BOR): STOP (SIGTERM/SIGUSR1/SIGINT seen by any rank, mpimem.run.signals), DUE (rank
0: the time interval has passed), BAD (rank 0: x is not finite) and FAILED (rank 0: the run
file could not be written). Every rank therefore takes the same decision at the same round
without any change to the round messages.
"""
import errno
import glob
import hashlib
import json
import os
import re
import time

import h5py
import numpy as np

from mpimem import __version__
from mpimem.errors import MpimemError, fault_point
from mpimem.core.metrics import METRICS
from mpimem.run.config import parse_every
from mpimem.run.runfile import check_output_dir, replace_file, run_id_of
from mpimem.run.server_state import ServerState
from mpimem.run.signals import Signals, settle

FORMAT = "mpimem-checkpoint"
FORMAT_VERSION = 1
EX_TEMPFAIL = 75            # exit status of a preempted run: "try again" (requeue and resume)
DEFAULT_EVERY = "60s"
POLL_ROUNDS = 256           # sync points for signals, time-based checkpoints and the NaN check
STOP, DUE, BAD, FAILED = 1, 2, 4, 8
# settings a resumed run may change; everything else must equal the checkpoint's
VOLATILE = {"out", "quiet", "checkpoint_every", "keep_checkpoints", "resume", "data", "extra",
            "overwrite"}


class CollectiveStop(Exception):
    """Raised on every rank at the same point: the run stops cleanly (rank 0 reports `message`)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- paths, test hooks
def checkpoint_dir(run_path: str) -> str:
    """Where the checkpoints of RUN.h5 live: RUN.ckpt/ next to it."""
    return os.path.splitext(os.path.abspath(run_path))[0] + ".ckpt"


def fault_hook():
    """MPIMEM_FAULT (a test hook, docs/checkpoints.md): 'die-during-checkpoint:N' os._exit()s
    rank 0 when half of its Nth checkpoint file is written; 'full-disk-at-checkpoint:N' makes
    that write fail there with ENOSPC. Returns (kind, N) or (None, 0)."""
    spec = os.environ.get("MPIMEM_FAULT", "")
    for kind in ("die-during-checkpoint", "full-disk-at-checkpoint"):
        if spec.startswith(kind + ":"):
            return kind, int(spec.split(":", 1)[1])
    return None, 0


def write_pidfile(rank: int) -> None:
    """MPIMEM_PIDFILE_DIR (a debugging aid): each rank writes rank<R>.pid there."""
    fault_point("write_pidfile", rank)
    directory = os.environ.get("MPIMEM_PIDFILE_DIR")
    if directory:
        with open(os.path.join(directory, f"rank{rank}.pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")


# ---------------------------------------------------------------------- the file
def _digest(h5) -> str:
    """SHA-256 over every dataset (sorted names; name, dtype, shape, bytes) and the root attrs."""
    names = []
    h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    h = hashlib.sha256()
    for name in sorted(names):
        a = np.ascontiguousarray(h5[name][()])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()
             if k != "sha256"}
    h.update(json.dumps({k: str(attrs[k]) for k in sorted(attrs)}).encode())
    return h.hexdigest()


def _round_of(path):
    m = re.search(r"ckpt-(\d+)\.h5$", path)
    return int(m.group(1)) if m else -1


def list_checkpoints(directory):
    """Checkpoint files in a directory, newest (highest round) first."""
    return sorted(glob.glob(os.path.join(directory, "ckpt-*.h5")), key=_round_of, reverse=True)


def claim(directory: str, run_id: str, overwrite: bool = False) -> list:
    """Make `directory` (a run's RUN.ckpt/, if it exists) safe for the run `run_id` and return
    the paths of its verified checkpoints of that run, newest first. Checkpoints of another
    run are refused with one line, or removed with overwrite; unreadable ones are left alone
    (removed with overwrite) and never counted."""
    if not os.path.isdir(directory):
        return []
    own, foreign, unreadable = [], [], []
    for path in list_checkpoints(directory):
        found = run_id_of(path)
        (unreadable if found is None else own if found == run_id else foreign).append(path)
    if foreign and not overwrite:
        raise MpimemError(f"{directory} holds {len(foreign)} checkpoint(s) of another run (e.g. "
                          f"{os.path.basename(foreign[0])}); resume that run with --resume, or "
                          f"give --overwrite to discard them")
    if overwrite:
        for path in foreign + unreadable:
            os.remove(path)
    verified = []
    for path in own:
        try:
            load(path)
            verified.append(path)
        except MpimemError:
            pass
    return verified


class CheckpointWriter:
    """Rank 0's writer: atomic files in `directory`, the newest `keep` verified ones kept."""

    def __init__(self, directory: str, keep: int, run_id: str = "", verified=()):
        """verified: the checkpoints of this run already in `directory` that were verified
        (claim()); with the ones written here they are the only candidates for pruning."""
        if keep < 1:
            raise MpimemError(f"--keep-checkpoints must be >= 1, got {keep}")
        self.directory, self.keep, self.run_id = directory, keep, run_id
        self.verified = list(verified)
        self.count = 0
        self.fault, self.fault_at = fault_hook()
        check_output_dir(directory)  # only RUN.ckpt/ itself is created
        try:
            os.makedirs(directory, exist_ok=True)
            for stale in glob.glob(os.path.join(directory, ".tmp-*")):  # from a crashed writer
                os.remove(stale)
            probe = os.path.join(directory, f".probe-{os.getpid()}")
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
            os.remove(probe)
        except OSError as err:
            raise MpimemError(f"checkpoint directory {directory} is not writable "
                              f"({err.strerror or err}); fix it or use --checkpoint-every off") from None

    def write(self, attrs: dict, server: dict, workers: list, metrics: dict) -> str:
        """One checkpoint; returns its path. OSError leaves the previous checkpoints untouched."""
        self.count += 1
        path = os.path.join(self.directory, f"ckpt-{int(attrs['round']):09d}.h5")
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        image = self.image(dict(attrs, run_id=self.run_id), server, workers, metrics)
        replace_file(path, tmp, image, durable=True,
                     midway=self._fault if self.fault_at == self.count else None)
        self.verified = [path] + [p for p in self.verified if p != path]
        self.prune(path)
        return path

    @staticmethod
    def image(attrs: dict, server: dict, workers: list, metrics: dict) -> bytes:
        """The checkpoint file's bytes, built in memory (nothing touches the disk)."""
        with h5py.File(f"checkpoint-in-memory-{os.getpid()}", "w", driver="core",
                       backing_store=False) as h5:
            h5.attrs.update(format=FORMAT, format_version=FORMAT_VERSION,
                            mpimem_version=__version__, written=time.time())
            for key, value in attrs.items():
                h5.attrs[key] = value
            g = h5.create_group("server")
            for key, value in server.items():
                g.create_dataset(key, data=value)
            for w, part in enumerate(workers, start=1):
                g = h5.create_group(f"workers/{w}")
                for key, value in part.items():
                    g.create_dataset(key, data=value)
            g = h5.create_group("metrics")
            for key in METRICS:
                g.create_dataset(key, data=np.asarray(metrics.get(key, []), dtype="f8"))
            h5.attrs["sha256"] = _digest(h5)
            h5.flush()
            return h5.id.get_file_image()

    def _fault(self, fd):
        """The test hooks, half-way through the file: rank 0 dies / the disk is full."""
        os.fsync(fd)
        if self.fault == "die-during-checkpoint":
            os._exit(9)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def prune(self, written):
        """Delete the verified checkpoints of this run beyond the newest `keep` (by round),
        never `written` (the one just written); nothing else in the directory is touched."""
        self.verified.sort(key=_round_of, reverse=True)
        for old in self.verified[self.keep:]:
            if old != written:
                try:
                    os.remove(old)
                except OSError:
                    pass
        self.verified = self.verified[:self.keep] + (
            [written] if written in self.verified[self.keep:] else [])


def load(path: str) -> dict:
    """A verified checkpoint: {'attrs', 'server', 'workers', 'metrics', 'path'}; MpimemError when
    it is missing, not a checkpoint, truncated or fails its checksum."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != FORMAT:
                raise MpimemError(f"{path}: not an mpimem checkpoint")
            stored = h5.attrs.get("sha256")
            actual = _digest(h5)
            if stored is None or (stored.decode() if isinstance(stored, bytes) else stored) != actual:
                raise MpimemError(f"{path}: checkpoint is damaged (SHA-256 checksum mismatch); "
                                  f"refusing to resume from it")
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
            server = {k: h5["server"][k][()] for k in h5["server"]}
            workers = [{k: h5[f"workers/{w}"][k][()] for k in h5[f"workers/{w}"]}
                       for w in range(1, int(attrs["workers"]) + 1)]
            metrics = {k: h5["metrics"][k][()] for k in h5["metrics"]}
    except MpimemError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise MpimemError(f"{path}: checkpoint is damaged or truncated ({err}); "
                          f"refusing to resume from it") from None
    return {"attrs": attrs, "server": server, "workers": workers, "metrics": metrics, "path": path}


def locate(target: str):
    """For --resume TARGET: (the newest valid checkpoint of its run, notes on the newer ones
    skipped, the run file the resumed run writes). TARGET is
    - a run file: its own RUN.ckpt/ next to it is searched, for checkpoints of its run id only
      (of any run id when the run file is unreadable: a crash can damage it); writes TARGET;
    - a RUN.ckpt/ directory or one checkpoint file: writes the RUN.h5 next to that directory
      (None for a checkpoint outside a .ckpt directory: --out must name the run file)."""
    if not os.path.exists(target):
        raise MpimemError(f"--resume {target}: no such file or directory")
    target = os.path.abspath(target)
    if os.path.isfile(target):
        kind = _format_of(target)
        if kind == FORMAT or (kind is None and _round_of(target) >= 0):
            found = load(target)
            return found, [], _run_file_next_to(os.path.dirname(target), found)
        directory, run_id = checkpoint_dir(target), run_id_of(target)
    else:
        directory, run_id = target, None
    candidates = list_checkpoints(directory)
    if not candidates:
        raise MpimemError(f"--resume {target}: no checkpoints in {directory}"
                          + _why_none(target) + "; start the run again (--overwrite)")
    notes = []
    for path in candidates:
        try:
            found = load(path)
        except MpimemError as err:
            notes.append(str(err))
            continue
        other = str(found["attrs"].get("run_id", ""))
        if run_id is not None and other != run_id:
            notes.append(f"{path}: belongs to another run (run id {other[:12] or '(none)'}, "
                         f"{os.path.basename(target)} is run {run_id[:12] or '(none)'})")
            continue
        return found, notes, target if os.path.isfile(target) else _run_file_next_to(directory, found)
    raise MpimemError(f"--resume {target}: no valid checkpoint of this run in {directory} "
                      f"({len(candidates)} tried; the newest: {notes[0]})")


def lock_run(cfg, head=None):
    """Rank 0, before anything of the run is created or changed: the output path checked
    (mpimem.run.runfile.check_run_path), the run locked (mpimem.run.lock: one line when another job
    holds it, a note when a dead one's lock is taken over; head: the checkpoint's attributes of
    --resume). Returns the held RunLock. A complete run is refused next (refuse_complete)."""
    import sys

    from mpimem.run.runfile import check_run_path
    from mpimem.run.lock import RunLock

    run_id = str(head.get("run_id", "")) if head is not None else None
    check_run_path(cfg.out, cfg.overwrite, run_id)
    return RunLock(cfg.out).acquire(note=lambda text: print(f"mpimem train: note: {text}",
                                                            file=sys.stderr, flush=True))


def refuse_complete(run_path: str, head: dict, resume: str) -> None:
    """Rank 0 under the run lock, after the settings are checked: MpimemError "run is complete;
    nothing to resume" when `head` (the checkpoint's attributes) is the run's final checkpoint
    and `run_path` is this run's run file with status complete."""
    run_id = str(head.get("run_id", ""))
    if int(head["round"]) < int(head["rounds"]):
        return                                    # rounds left to run after this checkpoint
    try:
        with h5py.File(run_path, "r", locking=False) as h5:
            attrs = {k: h5.attrs.get(k, "") for k in ("status", "run_id", "finished")}
    except (OSError, KeyError, ValueError):
        return                                    # missing or damaged: recreated by the resume
    attrs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}
    if attrs["status"] == "complete" and attrs["run_id"] == run_id:
        raise MpimemError(f"--resume {resume}: run is complete; nothing to resume ({run_path} "
                          f"finished {attrs['finished'] or '?'}; start a new run with another --out)")


def _why_none(target: str) -> str:
    """Why a run has no checkpoint, from its run file's status ('' when unknown): a job that
    died (Hydra's forced abort, SIGKILL, a lost node) leaves it "running"."""
    try:
        with h5py.File(target, "r", locking=False) as h5:
            status = h5.attrs.get("status")
            status = status.decode() if isinstance(status, bytes) else status
    except (OSError, KeyError, ValueError):
        return ""
    if status == "running":
        return (" (the run file says 'running': its job ended, e.g. killed, before the run's "
                "first checkpoint)")
    return f" (the run file says '{status}')" if status else ""


def _format_of(path: str):
    """The `format` attribute of an HDF5 file (None if unreadable or absent)."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            kind = h5.attrs.get("format")
            return kind.decode() if isinstance(kind, bytes) else kind
    except OSError:
        return None


def _run_file_next_to(directory: str, ckpt: dict):
    """RUN.h5 for a directory RUN.ckpt (the extension of the run file the checkpoint
    records); None when the directory is not named *.ckpt."""
    stem, ext = os.path.splitext(directory)
    if ext != ".ckpt":
        return None
    return stem + (os.path.splitext(str(ckpt["attrs"].get("run_file", "")))[1] or ".h5")


def resume_config(ckpt_attrs: dict, cfg, explicit, ranks: int):
    """The configuration of the resumed run: the checkpoint's, plus the volatile settings given
    now. Refuses a different number of workers (the shards and memories would not match); a
    launch of `ranks` MPI ranks has ranks - 1 workers, or `ranks` without a server
    (mpimem.run.config.has_server)."""
    from mpimem.run.config import TrainConfig, has_server

    saved = json.loads(ckpt_attrs["config"])
    w0 = int(ckpt_attrs["workers"])
    servers = 1 if has_server(saved.get("topology", "server")) else 0
    if ranks - servers != w0:
        raise MpimemError(f"{ckpt_attrs['path']}: the checkpoint has W = {w0} workers, this launch "
                          f"has W = {ranks - servers}; a run resumes only with the same number of "
                          f"workers (mpiexec -n {w0 + servers})")
    settings = dict(saved)
    for key in explicit:
        if key in settings:
            settings[key] = getattr(cfg, key)
    if "data" not in explicit:
        settings["data"] = ckpt_attrs["dataset"]
    if "out" not in explicit:  # the run named by --resume, never the path recorded inside
        if not ckpt_attrs.get("resume_run_file"):
            raise MpimemError(f"--resume {cfg.resume}: this checkpoint is not in a RUN.ckpt/ "
                              f"directory; name the run file to write with --out")
        settings["out"] = ckpt_attrs["resume_run_file"]
    settings["resume"] = cfg.resume
    settings["overwrite"] = bool(cfg.overwrite)  # never inherited from the checkpoint
    return TrainConfig(**settings)


def check_compatible(run, ckpt_attrs: dict) -> None:
    """After resolve(): the data set and every non-volatile setting must equal the checkpoint's."""
    if run.meta.fingerprint != ckpt_attrs["dataset_fingerprint"]:
        raise MpimemError(f"{run.cfg.data}: not the data set the checkpoint was trained on "
                          f"(fingerprint {run.meta.fingerprint[:12]} != "
                          f"{ckpt_attrs['dataset_fingerprint'][:12]}, {ckpt_attrs['dataset']})")
    saved = json.loads(ckpt_attrs["config"])
    now = json.loads(run.cfg.to_json())
    for key in sorted(set(saved) - VOLATILE):
        if now.get(key) != saved[key]:
            raise MpimemError(f"--{key.replace('_', '-')} {now.get(key)} differs from the "
                              f"checkpoint's {saved[key]}; a resumed run keeps its settings "
                              f"(start a new run to change them)")


# ---------------------------------------------------------------------- states over MPI
def _layout(state: dict) -> list:
    """(name, dtype, shape) of each array of a state dict, in its order (a few bytes)."""
    return [(key, np.asarray(value).dtype.str, np.shape(value)) for key, value in state.items()]


def _sizes(layout) -> list:
    """Bytes of each field in a packed buffer: its data, rounded up to 8 (aligned views)."""
    return [-(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize // 8) * 8
            for _, dt, shape in layout]


def _pack(state: dict) -> np.ndarray:
    """A state dict's arrays as one uint8 buffer (layout: _layout)."""
    layout = _layout(state)
    buf = np.zeros(sum(_sizes(layout)), np.uint8)
    at = 0
    for (key, _, _), size in zip(layout, _sizes(layout)):
        raw = np.ascontiguousarray(state[key]).reshape(-1).view(np.uint8)
        buf[at: at + raw.size] = raw
        at += size
    return buf


def _unpack(layout, buf: np.ndarray) -> dict:
    """The inverse of _pack: arrays that are views of `buf` (scalars as 0-d arrays)."""
    state, at = {}, 0
    for (key, dt, shape), size in zip(layout, _sizes(layout)):
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        state[key] = buf[at: at + count].view(dt).reshape(shape)
        at += size
    return state


def gather_states(comm, state):
    """Collective: each rank's state dict (None on a rank without one) to rank 0, in rank
    order. Only the layouts travel as pickles; the arrays go by one Gatherv into a buffer
    allocated once on rank 0. Returns the list on rank 0, None elsewhere."""
    from mpi4py import MPI

    layout = None if state is None else _layout(state)
    buf = np.zeros(0, np.uint8) if state is None else _pack(state)
    layouts = comm.gather(layout, root=0)
    if comm.Get_rank() != 0:
        comm.Gatherv(buf, None, root=0)
        return None
    counts = [0 if lay is None else sum(_sizes(lay)) for lay in layouts]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    recv = np.empty(sum(counts), np.uint8)
    comm.Gatherv(buf, [recv, counts, displs, MPI.BYTE], root=0)
    return [None if lay is None else _unpack(lay, recv[at: at + n])
            for lay, at, n in zip(layouts, displs, counts)]


def scatter_states(comm, states):
    """Collective, the inverse of gather_states: rank 0's list (one state dict or None per
    rank) to the ranks by one Scatterv; returns this rank's dict (None if it has none)."""
    from mpi4py import MPI

    send = None
    layouts = None
    if comm.Get_rank() == 0:
        layouts = [None if st is None else _layout(st) for st in states]
        parts = [np.zeros(0, np.uint8) if st is None else _pack(st) for st in states]
        counts = [p.size for p in parts]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        send = [np.concatenate(parts), counts, displs, MPI.BYTE]
    layout = comm.scatter(layouts, root=0)
    recv = np.empty(0 if layout is None else sum(_sizes(layout)), np.uint8)
    comm.Scatterv(send, recv, root=0)
    return None if layout is None else _unpack(layout, recv)


# ---------------------------------------------------------------------- the loop's side
class Checkpointing:
    """One rank's checkpoint/stop logic for the round loops (every mode)."""

    def __init__(self, run, every, keep, enabled=True):
        self.run = run
        self.rank = run.rank
        self.every_rounds, self.every_seconds = parse_every(every) if enabled else (None, None)
        self.enabled = enabled and (self.every_rounds or self.every_seconds) is not None
        self.signals = Signals()
        self.server = ServerState.of(run) if self.rank == 0 else None
        self.writer = None
        self.failure = None         # rank 0: why the run file could not be written (FAILED)
        if self.rank == 0:  # RUN.ckpt/ holds this run's checkpoints only (module docstring)
            directory = checkpoint_dir(run.cfg.out)
            verified = claim(directory, run.run_id, run.cfg.overwrite)
            if self.enabled:
                self.writer = CheckpointWriter(directory, keep, run.run_id, verified)
        self.last_time = time.perf_counter()
        self.last_path = None
        self.last_round = None
        self.finite_round = 0
        self.history = []           # rank 0: metrics rows so far
        self.stopped_at = None

    # rank 0 ----------------------------------------------------------------
    def record(self, row):
        self.history.append(row)

    def urgent(self):
        """This rank wants a sync point soon: it caught a signal, or (rank 0) a time-based
        checkpoint is due or the run file failed. Cheap (no O(d) work): the async server reads
        it at the start of each compiled segment (mpimem.comm.async_segments)."""
        if self.signals.caught:
            return True
        return self.rank == 0 and bool(self.failure or (
            self.every_seconds and time.perf_counter() - self.last_time >= self.every_seconds))

    def _local_flags(self, r):
        flags = STOP if self.signals.caught else 0
        if self.rank == 0:
            if self.every_seconds and time.perf_counter() - self.last_time >= self.every_seconds:
                flags |= DUE
            if self.history and self.history[-1]["round"] == r and not (
                    np.isfinite(self.history[-1]["loss_x"]) and
                    np.isfinite(self.history[-1]["loss_xbar"])):
                flags |= BAD
            if not (np.isfinite(self.run.replica.s) and np.isfinite(self.run.replica.z).all()):
                flags |= BAD
            if self.failure:
                flags |= FAILED
        return flags

    def _check(self, flags, r):
        """Every rank stops here together when x diverged or the run file cannot be written."""
        if flags & BAD:
            raise self._diverged(r)
        if flags & FAILED:
            raise CollectiveStop(f"{self.failure} at round {r}; stopped")

    def _sync(self, r):
        from mpi4py import MPI

        return self.run.comm.allreduce(self._local_flags(r), op=MPI.BOR)

    def _diverged(self, r):
        last = (f"; the last good checkpoint is {self.last_path} (round {self.last_round})"
                if self.last_path else "")
        epoch = r * self.run.workers * self.run.cfg.batch_size / self.run.n
        return CollectiveStop(f"the loss or the iterate became NaN/Inf between round "
                              f"{self.finite_round} and round {r} (epoch {epoch:.3f}); stopped "
                              f"(step size too large? --gamma {self.run.cfg.gamma}){last}")

    def boundary(self, r, started, is_eval, first=False, always=False):
        """Called by every rank before round r. Returns 'preempted' to stop. first: r is the
        first round of this launch, always a sync point, so that a signal caught during
        start-up stops the run here (mpimem.run.signals). always: a sync point in any case."""
        due_rounds = not first and self.every_rounds is not None and r % self.every_rounds == 0
        if not (first or always or due_rounds or is_eval or r % POLL_ROUNDS == 0):
            return None
        flags = self._sync(r)
        self._check(flags, r)
        self.finite_round = r
        if self.enabled and (due_rounds or flags & (DUE | STOP)):
            self.save(r, started, "signal" if flags & STOP else "interval")
        if flags & STOP:
            self.stopped_at = r
            settle()    # checkpointed: a later signal cannot turn exit 75 into a kill
            return "preempted"
        return None

    def final(self, r, started):
        """After the last round: the NaN check and the final checkpoint (collective); from
        here on signals are ignored (mpimem.run.signals.settle): the run completes, exit 0."""
        self._check(self._sync(r), r)
        if self.enabled:
            self.save(r, started, "final")
        settle()

    # the checkpoint itself (collective) --------------------------------------
    def save(self, r, started, reason):
        run = self.run
        part = None if not getattr(run, "worker_id", run.rank) else run.ws.state_dict()
        parts = gather_states(run.comm, part)
        err = None
        if self.rank == 0:
            try:
                self.last_path = self.writer.write(self._attrs(r, started, reason),
                                                   self.server.state_dict(), _workers(run, parts),
                                                   self.metrics_so_far())
                self.last_round = r
            except OSError as exc:
                err = (f"cannot write a checkpoint to {self.writer.directory} at round {r} "
                       f"({exc.strerror or exc}); the previous checkpoint "
                       f"{self.last_path or '(none)'} is intact")
        err = run.comm.bcast(err, root=0)
        self.last_path, self.last_round = run.comm.bcast((self.last_path, self.last_round), root=0)
        if err:
            raise CollectiveStop(err)
        self.last_time = time.perf_counter()

    def _attrs(self, r, started, reason):
        run = self.run
        return {
            "round": r, "rounds": run.rounds, "workers": run.workers, "n": run.n, "d": run.d,
            "dataset": os.path.abspath(run.cfg.data),
            "dataset_fingerprint": run.meta.fingerprint,
            "config": run.cfg.to_json(), "run_file": os.path.abspath(run.cfg.out),
            "run_id": run.run_id,
            "elapsed": time.perf_counter() - started, "reason": reason,
        }

    def metrics_so_far(self):
        fault_point("metrics_so_far", self.rank)
        return {k: [row.get(k, np.nan) for row in self.history] for k in METRICS}

    # resume --------------------------------------------------------------------
    def restore(self, ckpt):
        """Collective: rank 0 holds the loaded checkpoint; scatter it and restore every rank.
        Returns (start round, elapsed seconds at the checkpoint)."""
        fault_point("restore", self.rank)
        run = self.run
        comm = run.comm
        if self.rank == 0:
            self.server.load_state(ckpt["server"])
            parts = ckpt["workers"] if getattr(run, "peer", False) else [None] + ckpt["workers"]
            head = (int(ckpt["attrs"]["round"]), float(ckpt["attrs"]["elapsed"]), run.replica.s)
            rows = len(ckpt["metrics"].get("round", []))
            self.history = [{k: float(ckpt["metrics"][k][i]) for k in ckpt["metrics"]}
                            for i in range(rows)]
            self.last_path, self.last_round = ckpt["path"], head[0]
        else:
            parts, head = None, None
        mine = scatter_states(comm, parts)
        comm.Bcast(run.replica.z, root=0)   # every replica is the server's x (and EF21's G)
        comm.Bcast(run.replica.g, root=0)
        head = comm.bcast(head, root=0)
        run.replica.s = head[2]
        if mine is not None:
            run.ws.load_state(mine)
        self.finite_round = head[0]
        return head[:2]


def _workers(run, parts):
    """The worker states of gather_states' rank-ordered list: ranks 1..W behind a server, every
    rank with --topology allgather (worker w = rank w - 1)."""
    return parts if getattr(run, "peer", False) else parts[1:]
