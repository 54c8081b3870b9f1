"""`python -m mpimem.cli.warm`: compile every kernel of mpimem into its cache, without MPI.

`make install` runs it (where the install is writable), and a process that finds its CPU's
cache directory incomplete runs it once per node, under the directory's lock
(mpimem/_numba_cache.py). It builds tiny data sets of every storage and dtype (dense/CSR,
float32/float64) with the real `mpimem data` commands, runs the simulator over the topologies
and methods, and loads every compiled MPI segment for the argument types of each rank kind
(server, worker, peers with and without the averager, tree, async server and worker) by calling
it for zero rounds or compiling its signature: no MPI function is called. When it completes, it
writes the directory's marker `complete`; a failure is one line and no marker (the functions are
then compiled when first used).

    python -m mpimem.cli.warm [--quiet]
"""
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def configs() -> list:
    """(options, workers) that reach every compiled loop and method: the server's variants
    (the compressor only fills P), every topology of mpimem.run.config.TOPOLOGIES with 3
    workers (a tree has a leader and a non-power-of-two rank; a new topology is compiled here
    without an edit), the fixed-size allgather path and the async pair."""
    from mpimem.run.config import TOPOLOGIES

    return [
        (dict(), 2),
        (dict(compressor="qsgd", l2="server"), 2),
        (dict(compressor="rand_k", k=3, memory=False), 2),
        (dict(compressor="sign", downlink_k=5), 2),
        (dict(compressor="none"), 1),
        (dict(method="ef21", downlink_k=5), 2),
        (dict(k=2, k_warmup=1), 2),
        *[(dict(topology=t), 3) for t in TOPOLOGIES if t != "server"],
        (dict(topology="hierarchical", group_size=2), 3),
        (dict(topology="allgather", compressor="rand_k", k=3), 2),
        (dict(mode="async"), 2),
    ]


def datasets(folder):
    """Small data sets of each storage and dtype, written by `mpimem data` (in-process)."""
    from mpimem.cli import run_command

    rows = []
    for i in range(60):
        feats = " ".join(f"{j + 1}:{((i * 7 + j * 3) % 11) / 11 + 0.05:.3f}"
                         for j in range(40) if (i + j) % 3 == 0 or j == i % 40)
        rows.append(f"{1 if i % 2 else -1} {feats}")
    text = os.path.join(folder, "small.txt")
    with open(text, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    out = []
    for storage in ("dense", "csr"):
        for dtype in ("float32", "float64"):
            path = os.path.join(folder, f"{storage}-{dtype}.h5")
            _quiet(run_command, ["data", "convert", text, path, "--storage", storage,
                                 "--dtype", dtype, "--normalize", "--d", "40"])
            out.append(path)
    synth = os.path.join(folder, "synth.h5")
    _quiet(run_command, ["data", "synth", "--like", "rcv1", "--n", "60", "--d", "300", synth])
    _quiet(run_command, ["data", "optimum", out[0]])
    _quiet(run_command, ["data", "info", out[0]])
    return out + [synth]


def _quiet(fn, *args):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = fn(*args)
    if status not in (0, None):
        raise RuntimeError(f"mpimem {' '.join(args[0][:2])} failed (exit {status})")


def compile_data(path, opts, workers):
    """The simulator and every rank kind's segment for one data set and configuration."""
    from mpimem.run.config import resolve
    from mpimem.cli.options import merge
    from mpimem.data.dataset import read_meta, read_shard
    from mpimem.run.algorithm import (TREE_TOPOLOGIES, Algorithm, ShardData, compressor_for,
                                      make_averager)
    from mpimem.core.metrics import shard_sums
    from mpimem.run.simulate import simulate

    meta = read_meta(path)
    ranks = workers + (0 if opts.get("topology") in ("allgather", *TREE_TOPOLOGIES) else 1)
    cfg = resolve(merge(dict(data=path, epochs=0.2, **opts)), meta.n, meta.d, workers)
    shards = [read_shard(path, w, workers) for w in range(workers)]
    if cfg.mode == "sync":
        simulate(cfg, [(s.X, s.y) for s in shards], meta.d, meta.fstar_for(cfg.lam))
    rule = Algorithm(cfg, meta.d, workers, compressor_for(cfg, meta.d), meta.n)
    rule.warm_up(meta.storage == "dense", np.dtype(meta.dtype))
    peer = cfg.topology in ("allgather", *TREE_TOPOLOGIES)
    for rank in range(ranks):
        run = stub(cfg, rule, meta, rank, peer, workers, ranks)
        if run.worker_id:
            shard = shards[run.worker_id - 1]
            run.shard = ShardData(shard.X, shard.y)
            run.ws = rule.new_worker(run.worker_id, run.shard)
            shard_sums(run.shard, run.replica.x(), run.replica.x())
        if cfg.mode == "sync":
            from mpimem.run.driver import Run
            Run.segment(run, 0, 0)
        else:
            compile_async(run)
        if rank == 1 and not peer and cfg.mode == "sync":   # the benchmarks' in-process loop
            rule.run_local(run.ws, run.shard, run.replica, rule.make_aggregator(),
                           make_averager(cfg, meta.d), 0, 0)


def stub(cfg, rule, meta, rank, peer, workers, ranks):
    """The attributes of mpimem.run.driver.Run that its segment() reads, built by the same
    functions as Run.__init__ (without a communicator: the clock-only table; no MPI call)."""
    from mpimem.comm.mpicall import table
    from mpimem.comm.tree import TreePlan
    from mpimem.errors import slow_worker_delay
    from mpimem.run.algorithm import TREE_TOPOLOGIES, compressor_for
    from mpimem.run.driver import attach_buffers, tree_buffers

    run = SimpleNamespace(cfg=cfg, rule=rule, comp=compressor_for(cfg, meta.d), rank=rank,
                          peer=peer, workers=workers, worker_id=rank + 1 if peer else rank,
                          d=meta.d, n=meta.n, mpi=table(mpi=False), segment_seconds=0.5,
                          delay=slow_worker_delay(rank))
    slot = attach_buffers(run, meta.storage == "dense")
    if cfg.topology in TREE_TOPOLOGIES:
        plan = TreePlan.for_run(cfg.topology, ranks, cfg.group_size, [0] * ranks)
        run.tree = tree_buffers(table(mpi=False), plan, rank, slot, meta.d)
    return run


def compile_async(run):
    """The async server's and worker's compiled segments (mpimem.run.async_driver), by signature."""
    from mpimem.comm import async_segments as A
    from mpimem.run.async_driver import AsyncServer, share_of
    from mpimem.run.server_state import AsyncCounters

    if run.rank == 0:
        AsyncServer(run, AsyncCounters(run.workers))
        return
    reply = np.zeros(A.HEADER + 8 * run.d, np.uint8)
    A.preload(A.worker_segment, run.rule.P, run.mpi, run.shard.arrays, run.ws.arrays,
              run.rule.cs, run.replica.z, run.replica.scale, reply, np.zeros(3, np.int64),
              run.worker_id, share_of(run), run.delay)


def compile_all() -> float:
    """Every kernel, into this process's cache directory; returns the seconds it took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpimem-warm-") as folder:
        paths = datasets(folder)
        for path in paths:
            for opts, workers in configs():
                compile_data(path, opts, workers)
    return time.perf_counter() - started


def main(argv=None) -> int:
    import signal

    from mpimem import _numba_cache as cache

    os.environ[cache.ENV_WARMING] = "1"   # this process compiles: no child of its own
    try:   # handle sizes only (async): MPI itself is never started, not even as a singleton
        import mpi4py
        mpi4py.rc.initialize = mpi4py.rc.finalize = False
    except ImportError:
        pass
    argv = sys.argv[1:] if argv is None else argv
    quiet = "--quiet" in argv
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C: stop at once, no traceback
    path, readonly = cache.STATE["dir"], cache.STATE["readonly"]
    if readonly:
        print(f"mpimem.cli.warm: {path} is read-only ({cache.STATE['note'] or 'complete'}); "
              "nothing to do", file=sys.stderr)
        return 0
    if not quiet:
        print(f"mpimem.cli.warm: compiling every kernel into {path} ...", file=sys.stderr, flush=True)
    try:
        seconds = compile_all()
    except Exception as exc:   # the functions are then compiled when first used
        if os.environ.get("MPIMEM_WARM_DEBUG"):
            raise
        print(f"mpimem.cli.warm: incomplete ({type(exc).__name__}: {exc}); kernels will be compiled "
              "when first used", file=sys.stderr)
        return 1
    try:
        cache.write_marker(path, seconds)
    except OSError as exc:
        print(f"mpimem.cli.warm: cannot write the marker in {path}: {exc}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"mpimem.cli.warm: done in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
