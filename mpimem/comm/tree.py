"""The tree topologies: `--topology sparse-allreduce` and `--topology hierarchical`.

No server (`mpiexec -n W`): rank r is worker r+1 with shard r, as with allgather. The ranks form
groups, each led by its lowest rank: one group per node (MPI Split_type shared) or consecutive
ranks in groups of `--group-size G` (hierarchical), groups of one (sparse-allreduce). Round r:

  every rank:  step 1-1.2 -> its message u_w                       (mpimem.core.step.worker_step)
  member:      Send(u_w) to its leader                              (up |u_w|)
  leader:      acc = its own u_w + its members' in group-rank order (step.agg_add: float64)
  leaders:     allreduce of acc over the L leaders by recursive doubling (SparCML):
               p = 2^floor(log2 L); leader i >= p first sends acc to leader i - p, which adds it;
               stage s = 0 .. log2 p - 1: leaders i and i XOR 2^s exchange acc and each adds the
               other's (a + b = b + a bit for bit, so both hold the same sum); then leader i - p
               sends the result to leader i >= p, which takes it as its acc.
  leader:      U = float32(acc / W), the server's downlink encoding (step.round_finish);
               Bcast(header, U) in its group                        (members: down 8 + |U|)
  every rank:  x <- factor x - U                                    (step.server_apply; rank 0
                                                                     keeps xbar)

A partial sum travels as an 8-byte header (2 (n + 1) + stop; n = -1 for dense) and either its
n entries as float64 values then int32 indices (12 n bytes) while 12 n < 8 d, or the dense
float64 vector (8 d bytes). float64, so that U equals the server's (1/W) sum_w u_w to the order
of additions (1e-16 relative, well inside 1e-12) rather than to float32 rounding per stage; the
cost is 12 instead of 8 bytes an entry. Every leader ends with the same bits, so every replica
is bit-identical, and mpimem.run.simulate, which calls these same compiled functions in the same
order (tree_round), equals the MPI run bit for bit, bytes included. The segment's end rides in
the headers: rank 0 (leader 0) sets the stop bit, the exchanges OR it into every leader, the
group Bcast carries it to the members.

Bytes (each rank's counters, as handed to MPI): a member sends |u_w| and receives 8 + |U|; a
leader receives its members' messages, sends and receives every partial sum it exchanges, and
sends 8 + |U| once when its group has other ranks.
"""
import numpy as np
from numba import njit

from mpimem.core import layout, step, wire
from mpimem.core.kernels import CACHE
from mpimem.comm.mpicall import received_bytes, recv, send
from mpimem.core.clock import now
from mpimem.comm.segments import TAG_UP, _account, _receive_downlink, _send_downlink, peer_step

TAG_SUM = 12
# slots of a rank's plan row (TreePlan.row)
(R_LEADER, R_PRE_TO, R_PRE_FROM, R_POST_TO, R_POST_FROM, R_GROUP, R_STAGES) = range(7)


class TreePlan:
    """Who talks to whom in a round: groups of world ranks (sorted, leader first), ordered by
    leader; the leaders' recursive-doubling schedule (module docstring)."""

    def __init__(self, group_keys):
        """group_keys[r]: any key, equal for the ranks of one group."""
        groups = {}
        for rank, key in enumerate(group_keys):
            groups.setdefault(key, []).append(rank)
        self.groups = sorted(groups.values(), key=lambda g: g[0])
        self.leaders = [g[0] for g in self.groups]
        L = len(self.leaders)
        self.p = 1 << (L.bit_length() - 1)          # the largest power of two <= L
        self.stages = self.p.bit_length() - 1
        self.group_of = {r: gi for gi, g in enumerate(self.groups) for r in g}

    @classmethod
    def for_run(cls, topology, ranks, group_size=None, node_keys=None):
        """The plan of a run: groups of one (sparse-allreduce), of `group_size` consecutive
        ranks, or one per node (`node_keys`: each rank's node, e.g. its node leader's rank;
        None: one node)."""
        if topology == "sparse-allreduce":
            return cls(list(range(ranks)))
        if group_size:
            return cls([r // group_size for r in range(ranks)])
        return cls(node_keys if node_keys is not None else [0] * ranks)

    def members(self, rank) -> np.ndarray:
        """The ranks a leader receives from (its group but itself); empty for a member."""
        g = self.groups[self.group_of[rank]]
        return np.array(g[1:] if g[0] == rank else [], np.int64)

    def row(self, rank) -> np.ndarray:
        """This rank's plan: [leader's rank, pre-send to, pre-receive from, post-send to,
        post-receive from, group size, stages' partners...] (world ranks; -1: none)."""
        gi = self.group_of[rank]
        g = self.groups[gi]
        row = np.full(R_STAGES + self.stages, -1, np.int64)
        row[R_LEADER], row[R_GROUP] = g[0], len(g)
        if g[0] == rank:
            i, L = gi, len(self.leaders)
            if i >= self.p:
                row[R_PRE_TO] = row[R_POST_FROM] = self.leaders[i - self.p]
            else:
                if i + self.p < L:
                    row[R_PRE_FROM] = row[R_POST_TO] = self.leaders[i + self.p]
                for s in range(self.stages):
                    row[R_STAGES + s] = self.leaders[i ^ (1 << s)]
        return row


# ---------------------------------------------------------------- partial sums (compiled)
@njit(cache=CACHE)
def partial_encode(agg, buf, stop):
    """The leader's acc as a partial-sum message in buf (module docstring); its bytes."""
    acc, union, st = agg[0], agg[2], agg[3]
    d, n = acc.size, st[0]
    if st[1] == 0 and 12 * n < 8 * d:
        vals = buf[8: 8 + 8 * n].view(np.float64)
        idx = buf[8 + 8 * n: 8 + 12 * n].view(np.int32)
        for t in range(n):
            j = union[t]
            vals[t] = acc[j]
            idx[t] = j
        buf[:8].view(np.int64)[0] = 2 * (n + 1) + stop
        return 8 + 12 * n
    buf[8: 8 + 8 * d].view(np.float64)[:] = acc
    buf[:8].view(np.int64)[0] = stop
    return 8 + 8 * d


@njit(cache=CACHE)
def partial_merge(agg, buf):
    """acc += the partial sum in buf (partial_encode's format); returns its stop bit."""
    head = buf[:8].view(np.int64)[0]
    n = (head >> 1) - 1
    if n < 0:
        wire.agg_add_dense(agg, buf[8: 8 + 8 * agg[0].size].view(np.float64))
    else:
        wire.agg_add_sparse(agg, buf[8 + 8 * n: 8 + 12 * n].view(np.int32),
                            buf[8: 8 + 8 * n].view(np.float64), n)
    return head & 1


@njit(cache=CACHE)
def partial_reset(agg):
    """acc := 0 (the union forgotten), before taking a partial sum as the whole."""
    acc, mark, union, st = agg[0], agg[1], agg[2], agg[3]
    if st[1] != 0:
        acc[:] = 0.0
    else:
        for t in range(st[0]):
            acc[union[t]] = 0.0
            mark[union[t]] = 0
    st[0] = 0
    st[1] = 0


# ---------------------------------------------------------------- the segment
@njit(cache=CACHE)
def _exchange(mpi, agg, sbuf, rbuf, cap, stop, me, to, frm, counters):
    """Send acc to `to` and/or receive a partial sum from `frm` (-1: no such side), the lower
    rank sending first; a received sum is added to acc. Returns the stop bit seen."""
    if to >= 0:
        nb = partial_encode(agg, sbuf, stop)
        counters[layout.C_UP] += nb
    if to >= 0 and (frm < 0 or me < frm):
        send(mpi, sbuf, nb, to, TAG_SUM)
    if frm >= 0:
        recv(mpi, rbuf, cap, frm, TAG_SUM)
        counters[layout.C_DOWN] += received_bytes(mpi)
    if to >= 0 and frm >= 0 and me > frm:
        send(mpi, sbuf, nb, to, TAG_SUM)
    if frm >= 0:
        stop |= partial_merge(agg, rbuf)
    return stop


@njit(cache=CACHE)
def tree_segment(P, mpi, gmpi, shard, ws, cs, agg, z, scale, G, avg, track, row, members,
                 inbox, sbuf, rbuf, message, hdr, worker, r0, r1, budget, delay):
    """Every rank of the tree topologies for rounds r0 .. r1-1 (module docstring); row and
    members: TreePlan.row / members of this rank; gmpi: the mpicall table of its group's
    communicator (the Bcast of U); message: the downlink buffer (8-byte header, payload)."""
    workers = np.int64(P[layout.P_WORKERS])
    msg, counters, timing = ws[layout.W_MSG], ws[layout.W_COUNTERS], ws[layout.W_TIMING]
    me = worker - 1
    leader = row[R_LEADER] == me
    cap = rbuf.size
    started = now(mpi)
    for r in range(r0, r1):
        nbytes, t0, ask = peer_step(P, mpi, shard, ws, cs, z, scale, worker, r, r1, started,
                                    budget, delay)
        stop = np.int64(ask)
        if not leader:
            send(mpi, msg, nbytes, row[R_LEADER], TAG_UP)   # (worker_step counted it up)
            t1 = now(mpi)
            n, halt = _receive_downlink(gmpi, message, -1, hdr)
            counters[layout.C_DOWN] += 8 + n
            stop = np.int64(halt)
            t2 = now(mpi)
            step.server_apply(P, z, scale, G, message[8:], n, avg, track, r)
            _account(timing, now(mpi) - t2, t1 - t0, t2 - t1)
        else:
            step.agg_add(P, agg, cs, msg, nbytes, worker, r)
            counters[layout.C_UP] -= nbytes      # a leader's own message is not sent
            for m in members:
                recv(mpi, inbox, inbox.size, m, TAG_UP)
                size = received_bytes(mpi)
                counters[layout.C_DOWN] += size
                step.agg_add(P, agg, cs, inbox, size, m + 1, r)
            t1 = now(mpi)
            stop = _exchange(mpi, agg, sbuf, rbuf, cap, stop, me, row[R_PRE_TO], row[R_PRE_FROM],
                             counters)
            for s in range(R_STAGES, row.size):
                partner = row[s]
                if partner >= 0:
                    stop = _exchange(mpi, agg, sbuf, rbuf, cap, stop, me, partner, partner,
                                     counters)
            if row[R_POST_TO] >= 0:
                stop = _exchange(mpi, agg, sbuf, rbuf, cap, stop, me, row[R_POST_TO], -1,
                                 counters)
            if row[R_POST_FROM] >= 0:
                partial_reset(agg)
                stop = _exchange(mpi, agg, sbuf, rbuf, cap, stop, me, -1, row[R_POST_FROM],
                                 counters)
            t2 = now(mpi)
            n = step.round_finish(P, agg, G, np.float64(workers), r)
            if row[R_GROUP] > 1:
                _send_downlink(gmpi, message, n, -1, stop != 0, hdr)
                counters[layout.C_UP] += 8 + n
            t3 = now(mpi)
            step.server_apply(P, z, scale, G, message[8:], n, avg, track, r)
            _account(timing, now(mpi) - t3, (t3 - t2) + (t1 - t0), t2 - t1)
        if stop:
            return r + 1
    return r1


# ---------------------------------------------------------------- the simulator's round
def tree_round(rule, plan, aggs, messages, r, replica, counters):
    """Round r's aggregation in one process, with the compiled functions of tree_segment in
    the same order: tree_sum, then every leader's U (step.round_finish) and its group Bcast.
    Returns leader 0's downlink payload."""
    tree_sum(rule, plan, aggs, messages, r, counters)
    payload = None
    for gi, group in enumerate(plan.groups):
        n = step.round_finish(rule.P, aggs[gi].arrays, replica.g, float(rule.workers), r)
        if len(group) > 1:
            counters[group[0]][0] += 8 + n
            for rank in group[1:]:
                counters[rank][1] += 8 + n
        if gi == 0:
            payload = aggs[0].out[:n].copy()
    return payload


def tree_sum(rule, plan, aggs, messages, r, counters):
    """The groups' sums and the leaders' allreduce of round r: afterwards every leader's
    aggs[i].acc holds sum_w u_w. aggs[i]: leader i's Aggregator; messages[w]: rank w's bytes;
    counters[w]: rank w's [bytes up, bytes down], added to (on top of step.worker_step's count
    of every message as sent: a leader's own is taken back)."""
    P, cs, d = rule.P, rule.cs, rule.d
    buf = np.zeros(8 + 8 * d, np.uint8)
    for gi, group in enumerate(plan.groups):
        for rank in group:
            step.agg_add(P, aggs[gi].arrays, cs, messages[rank], messages[rank].size, rank + 1,
                         r)
            if rank != group[0]:
                counters[group[0]][1] += messages[rank].size
        counters[group[0]][0] -= messages[group[0]].size   # (worker_step counted it up)

    def move(src, dst, reset=False):
        nb = partial_encode(aggs[src].arrays, buf, 0)
        counters[plan.leaders[src]][0] += nb
        counters[plan.leaders[dst]][1] += nb
        if reset:
            partial_reset(aggs[dst].arrays)
        partial_merge(aggs[dst].arrays, buf)

    L, p = len(plan.leaders), plan.p
    for i in range(p, L):
        move(i, i - p)
    for s in range(plan.stages):
        sent = []
        for i in range(p):
            nb = partial_encode(aggs[i].arrays, buf, 0)
            sent.append(buf[:nb].copy())
        for i in range(p):
            j = i ^ (1 << s)
            counters[plan.leaders[i]][0] += sent[i].size
            counters[plan.leaders[i]][1] += sent[j].size
            partial_merge(aggs[i].arrays, sent[j])
    for i in range(p, L):
        move(i - p, i, reset=True)
