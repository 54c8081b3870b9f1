"""The server's algorithm state (rank 0), beside the workers' mpimem.engine.WorkerState.

Everything of rank 0 that the trajectory depends on, so that a checkpoint (mpimem.checkpoint)
saves it and a resumed run continues bit for bit:

  replica      x = s z (mpimem.model.Replica)
  averager     the lazy weighted average of the iterates: S, Cmark, C, wsum (None with
               --averaging none)
  downlink     the server's error memory of --downlink-k (None without it)
  timing       rank 0's seconds per TIMING_COLUMNS (statistics that continue across a resume)
  counters     --mode async only (mpimem.async_server): updates applied, messages applied per
               worker (worker w's message counter, which draws rand-k's indices), the staleness
               histogram so far, and what the next pulls carry: each worker's last pull and the
               change log since the oldest of them (so that a resumed run's pulls, and their
               bytes, are those of an uninterrupted run)

The state is held by reference: ServerState.of(run) wraps the run's own replica, averager,
aggregator memory and timing, so state_dict() reads and load_state() writes those objects in
place. With --topology allgather rank 0 is also a worker; its ServerState holds the averager
(rank 0 keeps xbar) and the iterate that every rank shares.
"""
import numpy as np


class AsyncCounters:
    """The async server's counters (mpimem.async_server): a checkpoint is taken at a quiescent
    point, where every granted message has been applied, so these are the whole protocol state."""

    def __init__(self, workers: int):
        self.applied = 0                                  # updates applied (the server's clock)
        self.msg_count = np.zeros(workers + 1, np.int64)  # messages applied per worker (index w)
        self.staleness = np.zeros(1, np.int64)            # count of applied messages by staleness
        self.last_pull = np.zeros(workers + 1, np.int64)  # update count at worker w's last pull
        self.log = []            # (update number, changed indices, or None: every coordinate)

    def log_arrays(self) -> dict:
        """The change log as arrays: numbers, sizes (-1: every coordinate), indices (joined)."""
        sizes = [-1 if idx is None else idx.size for _, idx in self.log]
        parts = [idx for _, idx in self.log if idx is not None]
        return {"log_numbers": np.array([n for n, _ in self.log], np.int64),
                "log_sizes": np.array(sizes, np.int64),
                "log_indices": np.concatenate(parts) if parts else np.zeros(0, np.int64)}

    def set_log(self, numbers, sizes, indices) -> None:
        """The inverse of log_arrays."""
        entries, at = [], 0
        for number, size in zip(numbers, sizes):
            idx = None if size < 0 else np.array(indices[at: at + size], np.int64)
            entries.append((int(number), idx))
            at += max(int(size), 0)
        self.log[:] = entries     # in place: the async server holds this very list

    def count_staleness(self, stale: int) -> None:
        if stale >= self.staleness.size:
            self.staleness = np.concatenate([self.staleness,
                                             np.zeros(stale + 1 - self.staleness.size, np.int64)])
        self.staleness[stale] += 1


class ServerState:
    """Rank 0's algorithm state with state_dict()/load_state() (module docstring)."""

    def __init__(self, replica, averager=None, downlink=None, timing=None, counters=None):
        self.replica = replica
        self.averager = averager
        self.downlink = downlink
        self.timing = np.zeros(0) if timing is None else timing
        self.counters = counters

    @classmethod
    def of(cls, run):
        """The state of a Run on rank 0: its replica, averager, downlink memory and timing, and
        async counters for --mode async."""
        agg = getattr(run, "agg", None)
        counters = AsyncCounters(run.workers) if run.cfg.mode == "async" else None
        return cls(run.replica, run.averager, None if agg is None else agg.memory, run.timing,
                   counters)

    def state_dict(self) -> dict:
        """Copies of every array a checkpoint saves under /server (docs/checkpoints.md)."""
        state = {"z": self.replica.z.copy(), "s": np.float64(self.replica.s),
                 "timing": self.timing.copy()}
        if self.averager is not None:
            a = self.averager
            state.update(S=a.S.copy(), Cmark=a.Cmark.copy(), C=np.float64(a.C),
                         wsum=np.float64(a.wsum))
        if self.downlink is not None:
            state["downlink_memory"] = self.downlink.copy()
        if self.counters is not None:
            c = self.counters
            state.update(updates_applied=np.int64(c.applied), msg_count=c.msg_count.copy(),
                         staleness=c.staleness.copy(), last_pull=c.last_pull.copy(),
                         **c.log_arrays())
        return state

    def load_state(self, state: dict) -> None:
        """Restore from state_dict() in place; a missing or misshapen array is a ValueError."""
        _put(self.replica.z, state, "z")
        self.replica.s = float(state["s"])
        _put(self.timing, state, "timing")
        if self.averager is not None:
            a = self.averager
            _put(a.S, state, "S")
            _put(a.Cmark, state, "Cmark")
            a.C, a.wsum = float(state["C"]), float(state["wsum"])
        if self.downlink is not None:
            _put(self.downlink, state, "downlink_memory")
        if self.counters is not None:
            c = self.counters
            c.applied = int(state["updates_applied"])
            _put(c.msg_count, state, "msg_count")
            c.staleness = np.array(state["staleness"], np.int64)
            _put(c.last_pull, state, "last_pull")
            c.set_log(state["log_numbers"], state["log_sizes"], state["log_indices"])


def _put(current: np.ndarray, state: dict, key: str) -> None:
    """current[...] = state[key], refusing a missing entry or another shape."""
    if key not in state:
        raise ValueError(f"server state: the checkpoint has no '{key}'")
    value = np.asarray(state[key], dtype=current.dtype)
    if value.shape != current.shape:
        raise ValueError(f"server state: checkpoint {key} has shape {value.shape}, expected "
                         f"{current.shape}")
    current[...] = value
