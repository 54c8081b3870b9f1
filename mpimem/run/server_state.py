"""The server's algorithm state (rank 0), beside the workers' mpimem.run.algorithm.WorkerState.

Everything of rank 0 that the trajectory depends on, so that a checkpoint (mpimem.run.checkpoint)
saves it and a resumed run continues bit for bit:

  replica      x = s z (mpimem.core.model.Replica), and EF21's G (saved as "g" when present)
  averager     the lazy weighted average of the iterates: S, Cmark, C, wsum (None with
               --averaging none)
  downlink     the server's error memory of --downlink-k (None without it)
  timing       rank 0's seconds per TIMING_COLUMNS (statistics that continue across a resume)
  counters     --mode async only (mpimem.run.async_driver): updates applied, messages applied per
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


class ChangeLog:
    """The async server's change log as arrays that compiled code appends to and reads
    (mpimem.comm.async_segments): live entry e (head <= e < tail of ptr = [head, tail, index end])
    is update numbers[e], which changed the coordinates indices[starts[e]: starts[e] + sizes[e]]
    of z, or every coordinate when sizes[e] = -1. Iterating gives (number, indices or None)."""

    def __init__(self, entries: int = 256, indices: int = 4096):
        self._allocate(entries, indices)

    def _allocate(self, entries, indices):
        self.numbers = np.zeros(entries, np.int64)
        self.starts = np.zeros(entries, np.int64)
        self.sizes = np.zeros(entries, np.int64)
        self.indices = np.zeros(indices, np.int32)
        self.ptr = np.zeros(3, np.int64)

    @property
    def arrays(self):
        return self.numbers, self.starts, self.sizes, self.indices, self.ptr

    def __len__(self):
        return int(self.ptr[1] - self.ptr[0])

    def __iter__(self):
        for e in range(int(self.ptr[0]), int(self.ptr[1])):
            size, at = int(self.sizes[e]), int(self.starts[e])
            yield int(self.numbers[e]), (None if size < 0 else
                                         self.indices[at: at + size].astype(np.int64))

    def __setitem__(self, key, entries):
        """log[:] = [(number, indices or None), ...] replaces every entry (as for a list)."""
        if key != slice(None):
            raise TypeError("a ChangeLog is replaced whole: log[:] = entries")
        entries = list(entries)
        parts = [np.asarray(idx) for _, idx in entries if idx is not None]
        total = sum(p.size for p in parts)
        self._allocate(max(256, 2 * len(entries)), max(4096, 2 * total))
        at = 0
        for e, (number, idx) in enumerate(entries):
            size = -1 if idx is None else len(idx)
            self.numbers[e], self.starts[e], self.sizes[e] = number, at, size
            if size > 0:
                self.indices[at: at + size] = idx
                at += size
        self.ptr[:] = 0, len(entries), at

    def clear(self):
        self.ptr[:] = 0

    def _live(self):
        """(head, tail, start of the live indices, their end)."""
        head, tail, end = (int(v) for v in self.ptr)
        return head, tail, int(self.starts[head]) if head < tail else end, end

    def fits(self, need: int) -> bool:
        """Whether one more entry of `need` indices fits once the live part is at the front."""
        head, tail, base, end = self._live()
        return tail - head < self.numbers.size and end - base + need <= self.indices.size

    def grow(self, need: int) -> None:
        """Twice the room (live entries and indices moved to the front), and room for one more
        entry of `need` indices."""
        head, tail, base, end = self._live()
        live, used = tail - head, end - base
        numbers, starts, sizes = self.numbers[head:tail], self.starts[head:tail] - base, \
            self.sizes[head:tail]
        indices = self.indices[base:end]
        self._allocate(2 * max(live + 1, self.numbers.size),
                      2 * max(used + need, self.indices.size))
        self.numbers[:live], self.starts[:live], self.sizes[:live] = numbers, starts, sizes
        self.indices[:used] = indices
        self.ptr[:] = 0, live, used


class AsyncCounters:
    """The async server's counters (mpimem.run.async_driver): a checkpoint is taken at a quiescent
    point, where every granted message has been applied, so these are the whole protocol state.
    `arrays` = (applied, msg_count, last_pull, histogram) is what the compiled server takes; the
    histogram has spare slots (staleness is the trimmed view a checkpoint saves)."""

    def __init__(self, workers: int):
        self.count = np.zeros(1, np.int64)                # [updates applied] (the server's clock)
        self.msg_count = np.zeros(workers + 1, np.int64)  # messages applied per worker (index w)
        self.last_pull = np.zeros(workers + 1, np.int64)  # update count at worker w's last pull
        self.log = ChangeLog()           # what changed since the oldest last pull
        self.hist = np.zeros(self.log.numbers.size + 1, np.int64)  # applied messages by staleness

    applied = property(lambda self: int(self.count[0]),
                       lambda self, v: self.count.__setitem__(0, v))

    @property
    def arrays(self):
        return self.count, self.msg_count, self.last_pull, self.hist

    @property
    def staleness(self) -> np.ndarray:
        """Counts of applied messages by staleness 0 .. the largest seen (at least [count 0])."""
        return self.hist[: max(1, int(np.flatnonzero(self.hist).max(initial=0)) + 1)].copy()

    @staleness.setter
    def staleness(self, counts) -> None:
        counts = np.asarray(counts, np.int64)
        self.hist = np.zeros(max(self.hist.size, counts.size), np.int64)
        self.hist[: counts.size] = counts

    def grow(self, need: int) -> None:
        """Room for the next update (the compiled server asked for it, mpimem.comm.async_segments):
        the change log grows, and the histogram to a slot for every staleness the log spans."""
        if not self.log.fits(need):
            self.log.grow(need)
        span = self.applied - int(self.last_pull[1:].min())
        if span >= self.hist.size:
            self.staleness = np.concatenate([self.hist, np.zeros(span + 1, np.int64)])

    def log_arrays(self) -> dict:
        """The change log as arrays: numbers, sizes (-1: every coordinate), indices (joined)."""
        entries = list(self.log)
        parts = [idx for _, idx in entries if idx is not None]
        return {"log_numbers": np.array([n for n, _ in entries], np.int64),
                "log_sizes": np.array([-1 if idx is None else idx.size for _, idx in entries],
                                      np.int64),
                "log_indices": np.concatenate(parts) if parts else np.zeros(0, np.int64)}

    def set_log(self, numbers, sizes, indices) -> None:
        """The inverse of log_arrays."""
        entries, at = [], 0
        for number, size in zip(numbers, sizes):
            entries.append((int(number), None if size < 0 else indices[at: at + size]))
            at += max(int(size), 0)
        self.log[:] = entries


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
        if self.replica.g.size:
            state["g"] = self.replica.g.copy()
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
        if self.replica.g.size:
            _put(self.replica.g, state, "g")
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
