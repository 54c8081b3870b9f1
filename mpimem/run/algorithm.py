"""One synchronous round of Mem-SGD (Algorithm 1, distributed as in SPEC "Distributed setting").

The same functions run in the MPI program (`mpimem.run.driver`) and in the in-process simulator
(`mpimem.run.simulate`), which is why the two produce bit-identical trajectories. Round r of
mini-batch b (schedule clock t = r b, step eta_t, see mpimem.core.schedule):

  1. worker w:  rows = next b rows of its shard (without replacement within an epoch)
  1.1           v = m + eta_t * sum_{i in rows} grad f_i(x_r)       (L2 term: see below)
  1.2           u = comp(v);  m := v - u;  send u                  (no memory: m := 0)
  2. server:    U = (1/W) sum_w u_w (summed in worker order), encoded as the downlink
  3. everyone:  x_{r+1} = factor * x_r - U   (server, and every worker on its replica)
  3.1 server:   xbar accumulates w_r x_r (lazily, mpimem.core.model.Averager)

`--method ef21` (docs/spec.md "EF21") runs the same round with EF21's steps 1', 2', 3' of
mpimem.core.step: the worker's m holds its gradient estimate h_w, every replica (or, for EF21-BC,
the server alone) holds G; `--k-warmup E` sets k per epoch (Algorithm.k_at) between segments.

L2 placement (`l2`): "worker" (the default) is the paper-exact update, grad f_i includes lam x,
so step 1.1 adds eta_t b lam x to v (O(d) per round) and factor = 1. "server" (the fast path)
leaves the L2 term out of the compressed vector and applies it exactly on the iterate,
factor = 1 - b eta_t lam, a scalar (x = s z); per round cost then grows with nnz and k, not d.
"""
import numpy as np
import scipy.sparse as sp

from mpimem.core import kernels as K
from mpimem.core import layout, step, topk_index
from mpimem.core.operators import OPERATORS, make_compressor
from mpimem.core.operators.top_k import TopK
from mpimem.core.wire import Aggregator, sparse_or_dense_nbytes
from mpimem.core.model import Averager, Replica, averager_arrays
from mpimem.comm.mpicall import table
from mpimem.comm.segments import local_segment
from mpimem.core.rng import QUANTISE, SAMPLING, stream_state
from mpimem.core.schedule import AveragingWeights, StepSchedule

TIMING_COLUMNS = ("gradient", "compression", "communication", "waiting", "evaluation")
TREE_TOPOLOGIES = ("sparse-allreduce", "hierarchical")   # mpimem.comm.tree


class ShardData:
    """A worker's rows in the form the kernels take: dense X, or CSR (data, indices, indptr)."""

    __slots__ = ("dense", "X", "data", "indices", "indptr", "y", "n", "max_row_nnz", "arrays")

    def __init__(self, X, y):
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.n = self.y.size
        self.dense = not sp.issparse(X)
        if self.dense:
            self.X = np.ascontiguousarray(X)
            self.data = self.indices = self.indptr = None
            self.max_row_nnz = X.shape[1]
        else:
            X = X.tocsr()
            self.X = X
            self.data, self.indices, self.indptr = X.data, X.indices, X.indptr
            self.max_row_nnz = int(np.diff(X.indptr).max()) if self.n else 0
        # the tuple mpimem.core.step takes: dense X (CSR: an empty X), or the CSR arrays
        if self.dense:
            none = np.zeros(0, self.X.dtype)
            self.arrays = (self.X, none, np.zeros(0, np.int32), np.zeros(1, np.int64), self.y)
        else:
            self.arrays = (np.zeros((0, 0), self.data.dtype), self.data,
                           self.indices.astype(np.int32, copy=False),
                           self.indptr.astype(np.int64, copy=False), self.y)


class WorkerState:
    """Everything of one worker that a checkpoint must save, plus its scratch buffers."""

    __slots__ = (
        # identity
        "worker",
        # algorithm state (Algorithm 1): error memory, sampler, random streams
        "m", "perm", "cursor", "rng_sample", "rng_quant",
        # derived from m, reset on load: the index of top-k on sparse data (mpimem.core.topk_index)
        "topk",
        # scratch (v: EF21's vector to compress, empty for Mem-SGD)
        "rows", "mark", "cand", "msg", "v",
        # statistics: counters = [bytes_up, bytes_down, ncand (candidates of the last round)]
        "counters", "timing",
        # everything above as the tuple mpimem.core.step takes
        "arrays",
    )

    def __init__(self, worker, shard: ShardData, d, batch, seed, compressor, use_index,
                 ef21=False):
        self.worker = worker
        self.m = np.zeros(d)
        self.perm = np.arange(shard.n, dtype=np.int64)
        self.cursor = np.zeros(2, np.int64)
        self.rng_sample = stream_state(seed, worker, SAMPLING)
        self.rng_quant = stream_state(seed, worker, QUANTISE)
        K.shuffle(self.perm, self.rng_sample)
        self.rows = np.zeros(batch, np.int64)
        self.mark = np.zeros(d, np.uint8)
        self.cand = np.zeros(max(1, min(d, batch * shard.max_row_nnz)), np.int64)
        self.msg = np.zeros(max(8, compressor.max_message_bytes()), np.uint8)
        self.counters = np.array([0, 0, -1], np.int64)
        self.timing = np.zeros(len(TIMING_COLUMNS))
        self.topk = topk_index.new_state(d, compressor.k) if use_index else topk_index.new_state(0, 1)
        self.v = np.zeros(d if ef21 else 0)
        self.arrays = (self.m, self.perm, self.cursor, self.rng_sample, self.rng_quant, self.rows,
                       self.mark, self.cand, self.msg, self.topk, self.counters, self.timing,
                       self.v)

    bytes_up = property(lambda self: int(self.counters[layout.C_UP]),
                        lambda self, v: self.counters.__setitem__(layout.C_UP, v))
    bytes_down = property(lambda self: int(self.counters[layout.C_DOWN]),
                          lambda self, v: self.counters.__setitem__(layout.C_DOWN, v))

    STATE = ("m", "perm", "cursor", "rng_sample", "rng_quant", "timing")

    def state_dict(self) -> dict:
        """Copies of everything a checkpoint saves for this worker (mpimem.run.checkpoint)."""
        state = {key: np.array(getattr(self, key), copy=True) for key in self.STATE}
        state.update(bytes_up=np.int64(self.bytes_up), bytes_down=np.int64(self.bytes_down))
        return state

    def load_state(self, state: dict) -> None:
        """Restore from state_dict(); the top-k pool (derived from m) starts afresh."""
        for key in self.STATE:
            current = getattr(self, key)
            value = np.asarray(state[key], dtype=current.dtype)
            if value.shape != current.shape:
                raise ValueError(f"worker {self.worker}: checkpoint {key} has shape "
                                 f"{value.shape}, expected {current.shape}")
            current[...] = value
        self.bytes_up, self.bytes_down = int(state["bytes_up"]), int(state["bytes_down"])
        self.counters[layout.C_NCAND] = -1
        topk_index.reset(self.topk[-1])   # the next round rebuilds the index from m


def compressor_for(cfg, d):
    """The run's operator, sized for the largest k it will use (d during a --k-warmup)."""
    k = d if cfg.k_warmup and OPERATORS[cfg.compressor].sparsifier else cfg.k
    return make_compressor(cfg.compressor, d, k, cfg.levels, cfg.memory, cfg.seed)


def warmup_schedule(cfg, d):
    """k of each warm-up epoch e < E = --k-warmup (DGC's exponential warm-up, from dense to
    the target k): k_e = max(k, min(d, round(d (k/d)^(e/E)))); empty without a warm-up."""
    E, k = cfg.k_warmup, cfg.k
    return [max(k, min(d, round(d * (k / d) ** (e / E)))) for e in range(E)]


class Algorithm:
    """The resolved rules of a run: operator, method, schedule, weights, placement of L2,
    and the same as the parameter array P of the compiled steps (mpimem.core.step). P's k is the
    only slot that changes during a run (set_round: the --k-warmup schedule)."""

    def __init__(self, cfg, d, workers, compressor, n=None):
        self.cfg = cfg
        self.d = d
        self.workers = workers
        self.comp = compressor
        self.n = n                      # rows of the data set (epochs of the warm-up)
        self.ef21 = cfg.method == "ef21"
        self.k_schedule = warmup_schedule(cfg, d) if cfg.k_warmup else []
        self.b = cfg.batch_size
        self.lam = cfg.lam
        self.memory = cfg.memory and compressor.keeps_memory
        self.l2_on_server = cfg.l2 == "server"
        self.schedule = StepSchedule(cfg.schedule, cfg.gamma, cfg.lam, cfg.shift)
        self.weights = AveragingWeights(cfg.averaging, cfg.shift)
        P = compressor.fill_params(np.zeros(layout.P_SIZE))
        P[layout.P_B], P[layout.P_LAM] = self.b, self.lam
        P[layout.P_L2_SERVER], P[layout.P_MEMORY] = self.l2_on_server, self.memory
        P[layout.P_SCHEDULE] = step.SCHEDULE_CODES[cfg.schedule]
        P[layout.P_GAMMA], P[layout.P_SHIFT] = cfg.gamma, cfg.shift
        P[layout.P_AVERAGING] = step.AVERAGING_CODES[cfg.averaging]
        P[layout.P_WORKERS] = workers
        P[layout.P_METHOD] = step.METHOD_CODES[cfg.method]
        P[layout.P_BC] = self.ef21 and bool(cfg.downlink_k)
        self.P = P
        self.set_round(0)
        self.cs = compressor.scratch(workers)
        self.clock = table(mpi=False)

    def uses_index(self, shard: ShardData) -> bool:
        """The incremental top-k index (mpimem.core.topk_index) when a round changes only the rows'
        nonzeros and the last selection of the memory: CSR rows, memory, server-side L2, a
        fixed k, Mem-SGD (EF21 compresses grad - h_w, which changes wherever h_w is nonzero).
        Without it top-k with memory scans all d coordinates (mpimem.core.step.worker_step)."""
        return (isinstance(self.comp, TopK) and not shard.dense and self.memory
                and self.l2_on_server and not self.k_schedule and not self.ef21)

    # ---------------------------------------------------------------- the k warm-up
    def epoch_start(self, e: int) -> int:
        """The first round of epoch e: the smallest r with r W b >= e n."""
        return -(-e * self.n // (self.workers * self.b))

    def k_at(self, r: int) -> int:
        """k of round r: the warm-up's k of its epoch (r W b) // n, else the target k."""
        if not self.k_schedule:
            return self.cfg.k
        e = r * self.workers * self.b // self.n
        return self.k_schedule[e] if e < len(self.k_schedule) else self.cfg.k

    def set_round(self, r: int) -> None:
        """P's k for the rounds from r to the next warm-up epoch (a no-op without one)."""
        if self.k_schedule:
            self.P[layout.P_K] = self.k_at(r)

    def next_k_change(self, r: int) -> int:
        """The first round after r at which k changes (None: never)."""
        starts = [self.epoch_start(e) for e in range(1, len(self.k_schedule) + 1)]
        return next((s for s in starts if s > r), None)

    def new_replica(self) -> Replica:
        """A replica of the iterate, with EF21's G on every rank that applies it."""
        return Replica(self.d, gradient=self.ef21)

    def new_worker(self, worker: int, shard: ShardData) -> WorkerState:
        return WorkerState(worker, shard, self.d, self.b, self.cfg.seed, self.comp,
                           self.uses_index(shard), self.ef21)

    def eta(self, r):
        return self.schedule.eta(r * self.b)

    def factor(self, r):
        """The scale of x in step 3: 1 - b eta_t lam (server-side L2) or 1 (paper-exact)."""
        return step.factor_of(self.P, self.eta(r))

    def fixed_message_bytes(self, dense_data: bool) -> int:
        """The size of every worker's message when it is the same every round, else -1: the
        quantisers and sign always; rand-k (k values); top-k with k entries (it sends fewer
        only without memory on CSR rows with server-side L2, where it scans the touched
        coordinates alone); plain SGD when its message is dense (every coordinate changes:
        dense rows, or the L2 term on the worker)."""
        if self.k_schedule:
            return -1
        every_coordinate = dense_data or not self.l2_on_server
        if self.comp.fixed_size(every_coordinate, self.memory):
            return self.comp.max_message_bytes()
        return -1

    def fixed_downlink_bytes(self, dense_data: bool) -> int:
        """The downlink payload's size when it is the same every round, else -1. Then the sync
        server broadcasts header and payload as one message (mpimem.comm.segments): the
        --downlink-k vector (K entries), a dense downlink (the quantisers, sign, dense plain
        SGD), and one worker's fixed-size top-k or rand-k message (k entries)."""
        if self.cfg.downlink_k:
            return sparse_or_dense_nbytes(self.cfg.downlink_k, self.d)
        if self.fixed_message_bytes(dense_data) < 0:
            return -1
        if not self.comp.sparsifier:     # a fixed-size dense u: the mean is dense
            return 4 * self.d
        return sparse_or_dense_nbytes(self.comp.k, self.d) if self.workers == 1 else -1

    def make_aggregator(self):
        """The server's (a leader's, a peer's) scratch; the tree topologies' partial sums may
        hold every coordinate (mpimem.comm.tree), so their union has room for d."""
        per_message = self.comp.max_message_bytes() // 4
        entries = self.d if self.cfg.topology in TREE_TOPOLOGIES else self.workers * per_message
        return Aggregator(self.d, self.workers, entries, self.cfg.downlink_k)

    def warm_up(self, dense: bool, dtype) -> None:
        """One round on throwaway state and a fake shard of the run's storage and dtype, so that
        every compiled kernel is loaded (about 0.3 s a process) before the clock starts. The
        real states and random streams are not touched."""
        b, d = self.b, self.d
        if dense:
            X = np.zeros((b, d), dtype)
        else:
            X = sp.csr_matrix((np.ones(b, dtype), np.arange(b) % d, np.arange(b + 1)), shape=(b, d))
        shard = ShardData(X, np.ones(b))
        ws = self.new_worker(1, shard)
        replica, averager = self.new_replica(), Averager(d)
        nbytes = self.worker_step(ws, shard, replica, 0)
        payload = self.aggregate(self.make_aggregator(), [ws.msg[:nbytes]], 0, replica)
        self.apply(replica, payload, 0, averager)

    # ---------------------------------------------------------------- the steps (mpimem.core.step)
    def worker_step(self, ws: WorkerState, shard: ShardData, replica: Replica, r: int) -> int:
        """Steps 1-1.2 for worker ws in round r; the message is ws.msg[:returned byte count]."""
        return step.worker_step(self.P, shard.arrays, ws.arrays, self.cs, replica.z,
                                replica.scale, ws.worker, r, self.eta(r), self.clock)

    def aggregate(self, agg: Aggregator, messages, r: int, replica: Replica) -> np.ndarray:
        """U = (1/W) sum_w u_w from the W messages (worker order); returns the downlink payload
        (EF21-BC: D, updating the server replica's G)."""
        for w, msg in enumerate(messages, start=1):
            step.agg_add(self.P, agg.arrays, self.cs, msg, msg.size, w, r)
        n = step.round_finish(self.P, agg.arrays, replica.g, float(self.workers), r)
        return agg.out[:n]

    def run_local(self, ws: WorkerState, shard: ShardData, replica: Replica, agg: Aggregator,
                  averager: Averager, r0: int, r1: int) -> float:
        """Rounds r0 .. r1-1 of one worker and the server in one process, compiled
        (mpimem.comm.segments.local_segment); returns the server's aggregate + apply seconds."""
        server = np.zeros(1)
        local_segment(self.P, self.clock, shard.arrays, ws.arrays, self.cs, agg.arrays, replica.z,
                      replica.scale, replica.g, averager_arrays(averager), averager is not None, ws.worker,
                      r0, r1, server)
        return float(server[0])

    def apply(self, replica: Replica, payload: np.ndarray, r: int, averager: Averager = None):
        """x_{r+1} = factor x_r - U on a replica; the server also counts w_r x_r into xbar."""
        step.server_apply(self.P, replica.z, replica.scale, replica.g, payload, payload.size,
                          averager_arrays(averager), averager is not None, r)


def make_averager(cfg, d):
    """The server's averager, or None when the report uses the last iterate (averaging none)."""
    return None if cfg.averaging == "none" else Averager(d)


def xbar_of(replica: Replica, averager: Averager):
    return replica.x() if averager is None else averager.xbar(replica)


def eval_rounds(cfg, n, workers, total_rounds):
    """The rounds after which the run is evaluated: 0, every eval_every epochs, and the last."""
    per_epoch = n / (workers * cfg.batch_size)
    points = {0, total_rounds}
    e = cfg.eval_every
    while e * per_epoch < total_rounds:
        points.add(int(round(e * per_epoch)))
        e += cfg.eval_every
    return sorted(points)


def total_rounds(cfg, n, workers):
    """Rounds for the sample budget: ceil(budget / (W b)), budget = samples or epochs * n."""
    budget = cfg.samples if cfg.samples else int(round(cfg.epochs * n))
    return max(1, -(-budget // (workers * cfg.batch_size)))
