"""Checkpoints of a synchronous Mem-SGD run: write atomically, verify, resume (docs/checkpoints.md).

What a checkpoint holds (everything the trajectory depends on, so that a resumed run is
bit-identical to an uninterrupted one): the server's iterate x = s z, the averager (S, Cmark,
C, wsum), the round counter; per worker its error memory m, sampler (perm, cursor), RNG states
(rng_sample, rng_quant; rand-k indices are stateless per round), byte counters and timings; the
metrics rows so far, the resolved configuration and the data set's fingerprint. The top-k pool
is derived from m and rebuilt on load (WorkerState.load_state).

File: <run>.ckpt/ckpt-<round>.h5, written by rank 0 only after the workers' states are
gathered (comm.gather), as a temporary file that is fsync'ed and renamed; the last K are kept.
The root attribute sha256 covers every dataset (name, dtype, shape, bytes) and every other
root attribute, so truncation or a flipped bit is detected on load.

Control at round boundaries (Run.loop calls `boundary`): a "sync point" is a round that is a
multiple of POLL_ROUNDS, a round-interval checkpoint, or an evaluation round. There every rank
contributes flags to one tiny Allreduce(BOR): STOP (SIGTERM/SIGUSR1 seen by any rank), DUE (rank
0: the time interval has passed) and BAD (rank 0: x is not finite). Every rank therefore takes
the same decision at the same round without any change to the round messages.
"""
import errno
import glob
import hashlib
import json
import os
import re
import signal
import time

import h5py
import numpy as np

from . import __version__
from .errors import MpimemError
from .metrics import METRICS
from .runfile import check_output_dir

FORMAT = "mpimem-checkpoint"
FORMAT_VERSION = 1
EX_TEMPFAIL = 75            # exit status of a preempted run: "try again" (requeue and resume)
DEFAULT_EVERY = "60s"
POLL_ROUNDS = 256           # sync points for signals, time-based checkpoints and the NaN check
STOP, DUE, BAD = 1, 2, 4
# settings a resumed run may change; everything else must equal the checkpoint's
VOLATILE = {"out", "quiet", "checkpoint_every", "keep_checkpoints", "resume", "data", "extra"}


class CollectiveStop(Exception):
    """Raised on every rank at the same point: the run stops cleanly (rank 0 reports `message`)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- options, test hooks
def parse_every(text):
    """(rounds, seconds) from '500', '30s', '5m', '1h'; (None, None) for 'off'/'0'."""
    s = str(text).strip().lower()
    if s in ("off", "0", "none", "no"):
        return None, None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(s|sec|m|min|h)?", s)
    if not m:
        raise MpimemError(f"--checkpoint-every must be a number of rounds (500) or a time "
                          f"(30s, 5m, 1h) or 'off', got '{text}'")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if value != int(value) or value < 1:
            raise MpimemError(f"--checkpoint-every: rounds must be a whole number >= 1, got '{text}'")
        return int(value), None
    seconds = value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise MpimemError(f"--checkpoint-every must be > 0, got '{text}'")
    return None, seconds


def checkpoint_dir(run_path: str) -> str:
    """Where the checkpoints of RUN.h5 live: RUN.ckpt/ next to it."""
    return os.path.splitext(os.path.abspath(run_path))[0] + ".ckpt"


def fault_hook():
    """MPIMEM_FAULT (a test hook, docs/checkpoints.md): 'die-during-checkpoint:N' os._exit()s
    rank 0 in the middle of writing its Nth checkpoint; 'full-disk-at-checkpoint:N' makes that
    write fail with ENOSPC. Returns (kind, N) or (None, 0)."""
    spec = os.environ.get("MPIMEM_FAULT", "")
    for kind in ("die-during-checkpoint", "full-disk-at-checkpoint"):
        if spec.startswith(kind + ":"):
            return kind, int(spec.split(":", 1)[1])
    return None, 0


def write_pidfile(rank: int) -> None:
    """MPIMEM_PIDFILE_DIR (a debugging aid): each rank writes rank<R>.pid there."""
    directory = os.environ.get("MPIMEM_PIDFILE_DIR")
    if directory:
        with open(os.path.join(directory, f"rank{rank}.pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")


class Signals:
    """SIGTERM / SIGUSR1 set a flag; the loop acts on it at the next sync point."""

    def __init__(self):
        self.caught = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.caught = signum


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


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _round_of(path):
    m = re.search(r"ckpt-(\d+)\.h5$", path)
    return int(m.group(1)) if m else -1


def list_checkpoints(directory):
    """Checkpoint files in a directory, newest (highest round) first."""
    return sorted(glob.glob(os.path.join(directory, "ckpt-*.h5")), key=_round_of, reverse=True)


class CheckpointWriter:
    """Rank 0's writer: atomic files in `directory`, the last `keep` kept."""

    def __init__(self, directory: str, keep: int):
        if keep < 1:
            raise MpimemError(f"--keep-checkpoints must be >= 1, got {keep}")
        self.directory, self.keep = directory, keep
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
        try:
            with h5py.File(tmp, "w") as h5:
                h5.attrs.update(format=FORMAT, format_version=FORMAT_VERSION,
                                mpimem_version=__version__, written=time.time())
                for key, value in attrs.items():
                    h5.attrs[key] = value
                g = h5.create_group("server")
                for key, value in server.items():
                    g.create_dataset(key, data=value)
                if self.fault_at == self.count:  # test hooks: rank 0 dies / the disk fills
                    h5.flush()
                    if self.fault == "die-during-checkpoint":
                        os._exit(9)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                for w, part in enumerate(workers, start=1):
                    g = h5.create_group(f"workers/{w}")
                    for key, value in part.items():
                        g.create_dataset(key, data=value)
                g = h5.create_group("metrics")
                for key in METRICS:
                    g.create_dataset(key, data=np.asarray(metrics.get(key, []), dtype="f8"))
                h5.attrs["sha256"] = _digest(h5)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.directory)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        for old in list_checkpoints(self.directory)[self.keep:]:
            try:
                os.remove(old)
            except OSError:
                pass
        return path


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
    """The newest valid checkpoint for --resume TARGET (a run file, a .ckpt directory, or one
    checkpoint file) and the notes on newer ones that were skipped as damaged."""
    if not os.path.exists(target):
        raise MpimemError(f"--resume {target}: no such file or directory")
    if os.path.isfile(target):
        kind = None
        try:
            with h5py.File(target, "r") as h5:
                kind = h5.attrs.get("format")
                kind = kind.decode() if isinstance(kind, bytes) else kind
                directory = h5.attrs.get("checkpoint_dir")
        except OSError:
            directory = None  # a run file damaged by the crash: its checkpoints are still there
        if kind == FORMAT or (kind is None and _round_of(target) >= 0):
            return load(target), []
        if directory is None or not os.path.isdir(str(directory)):
            directory = checkpoint_dir(target)
        directory = directory.decode() if isinstance(directory, bytes) else str(directory)
    else:
        directory = target
    candidates = list_checkpoints(directory)
    if not candidates:
        raise MpimemError(f"--resume {target}: no checkpoints in {directory}")
    notes = []
    for path in candidates:
        try:
            return load(path), notes
        except MpimemError as err:
            notes.append(str(err))
    raise MpimemError(f"--resume {target}: every checkpoint in {directory} is damaged "
                      f"({len(candidates)} tried)")


def resume_config(ckpt_attrs: dict, cfg, explicit, workers: int):
    """The configuration of the resumed run: the checkpoint's, plus the volatile settings given
    now. Refuses a different number of workers (the shards and memories would not match)."""
    from .config import TrainConfig

    saved = json.loads(ckpt_attrs["config"])
    w0 = int(ckpt_attrs["workers"])
    if workers != w0:
        raise MpimemError(f"{ckpt_attrs['path']}: the checkpoint has W = {w0} workers, this launch "
                          f"has W = {workers}; a run resumes only with the same number of workers "
                          f"(mpiexec -n {w0 + 1})")
    settings = dict(saved)
    for key in explicit:
        if key in settings:
            settings[key] = getattr(cfg, key)
    if "data" not in explicit:
        settings["data"] = ckpt_attrs["dataset"]
    if "out" not in explicit:
        settings["out"] = ckpt_attrs["run_file"]
    settings["resume"] = cfg.resume
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


# ---------------------------------------------------------------------- the loop's side
class Checkpointing:
    """One rank's checkpoint/stop logic for Run.loop (sync mode)."""

    def __init__(self, run, every, keep, enabled=True):
        self.run = run
        self.rank = run.rank
        self.every_rounds, self.every_seconds = parse_every(every) if enabled else (None, None)
        self.enabled = enabled and (self.every_rounds or self.every_seconds) is not None
        self.signals = Signals()
        self.writer = None
        if self.rank == 0 and self.enabled:
            self.writer = CheckpointWriter(checkpoint_dir(run.cfg.out), keep)
        self.last_time = time.perf_counter()
        self.last_path = None
        self.last_round = None
        self.finite_round = 0
        self.history = []           # rank 0: metrics rows so far
        self.stopped_at = None

    # rank 0 ----------------------------------------------------------------
    def record(self, row):
        self.history.append(row)

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
        return flags

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

    def boundary(self, r, started, is_eval):
        """Called by every rank before round r (r > start). Returns 'preempted' to stop."""
        due_rounds = self.every_rounds is not None and r % self.every_rounds == 0
        if not (due_rounds or is_eval or r % POLL_ROUNDS == 0):
            return None
        flags = self._sync(r)
        if flags & BAD:
            raise self._diverged(r)
        self.finite_round = r
        if self.enabled and (due_rounds or flags & (DUE | STOP)):
            self.save(r, started, "signal" if flags & STOP else "interval")
        if flags & STOP:
            self.stopped_at = r
            return "preempted"
        return None

    def final(self, r, started):
        """After the last round: the NaN check and the final checkpoint (collective)."""
        if self._sync(r) & BAD:
            raise self._diverged(r)
        if self.enabled:
            self.save(r, started, "final")

    # the checkpoint itself (collective) --------------------------------------
    def save(self, r, started, reason):
        run = self.run
        part = None if not getattr(run, "worker_id", run.rank) else run.ws.state_dict()
        parts = run.comm.gather(part, root=0)
        err = None
        if self.rank == 0:
            try:
                self.last_path = self.writer.write(self._attrs(r, started, reason),
                                                   self._server_state(), parts[1:],
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
            "elapsed": time.perf_counter() - started, "reason": reason,
        }

    def _server_state(self):
        run = self.run
        state = {"z": run.replica.z, "s": np.float64(run.replica.s), "timing": run.timing}
        if run.averager is not None:
            a = run.averager
            state.update(S=a.S, Cmark=a.Cmark, C=np.float64(a.C), wsum=np.float64(a.wsum))
        if run.agg.memory is not None:  # --downlink-k: the server's own error memory
            state.update(downlink_memory=run.agg.memory)
        return state

    def metrics_so_far(self):
        return {k: [row.get(k, np.nan) for row in self.history] for k in METRICS}

    # resume --------------------------------------------------------------------
    def restore(self, ckpt):
        """Collective: rank 0 holds the loaded checkpoint; scatter it and restore every rank.
        Returns (start round, elapsed seconds at the checkpoint)."""
        run = self.run
        comm = run.comm
        if self.rank == 0:
            srv = ckpt["server"]
            z, s = srv["z"], float(srv["s"])
            parts = [None] + [dict(w, z=z, s=s) for w in ckpt["workers"]]
            head = (int(ckpt["attrs"]["round"]), float(ckpt["attrs"]["elapsed"]))
        else:
            parts, head = None, None
        mine = comm.scatter(parts, root=0)
        head = comm.bcast(head, root=0)
        if self.rank == 0:
            run.replica.z[:] = srv["z"]
            run.replica.s = float(srv["s"])
            run.timing[:] = srv["timing"]
            if run.averager is not None:
                a = run.averager
                a.S[:], a.Cmark[:] = srv["S"], srv["Cmark"]
                a.C, a.wsum = float(srv["C"]), float(srv["wsum"])
            if run.agg.memory is not None:
                run.agg.memory[:] = srv["downlink_memory"]
            rows = len(ckpt["metrics"].get("round", []))
            self.history = [{k: float(ckpt["metrics"][k][i]) for k in ckpt["metrics"]}
                            for i in range(rows)]
            self.last_path, self.last_round = ckpt["path"], head[0]
        else:
            run.replica.z[:] = mine["z"]
            run.replica.s = float(mine["s"])
            run.ws.load_state(mine)
        self.finite_round = head[0]
        return head
