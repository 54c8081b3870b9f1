"""`--topology allgather` (mpiexec -n W, no server): every rank's replica is bit-identical and
the run equals the sync-server simulator on the same W shards, bit for bit."""
import json

import numpy as np
import pytest

from conftest import run_mpi
from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.run.algorithm import Algorithm, compressor_for
from mpimem.run.runfile import read_run
from mpimem.run.simulate import simulate


CASES = [
    ("eps", 1, dict(compressor="top_k", k=2)),
    ("eps", 2, dict(compressor="rand_k", k=3, batch_size=2)),
    ("eps", 3, dict(compressor="qsgd", bits=4)),
    ("rcv", 2, dict(compressor="top_k", k=10, l2="server")),   # the incremental top-k index
    ("rcv", 3, dict(compressor="none", schedule="bottou", gamma=1.0)),
    # sparse plain SGD with server-side L2: sizes vary by round (Allgather of sizes, then
    # Allgatherv); every other case has fixed-size messages (one Allgather of [size, message])
    ("rcv", 2, dict(compressor="none", l2="server", schedule="bottou", gamma=1.0)),
    ("eps", 2, dict(compressor="sign", l2="server", schedule="constant", gamma=0.05)),
    ("eps", 3, dict(compressor="ternary", l2="worker", schedule="bottou", gamma=1.0)),
    # EF21: every rank keeps G; the k warm-up: sizes vary by epoch (Allgather + Allgatherv)
    ("eps", 2, dict(compressor="top_k", k=2, method="ef21")),
    ("rcv", 3, dict(compressor="rand_k", k=10, k_warmup=1, method="memsgd")),
]


@pytest.mark.mpi_core
@pytest.mark.parametrize("which,workers,opts", CASES,
                         ids=[f"{c[0]}-W{c[1]}-{c[2]['compressor']}"
                              + ("-" + c[2]["method"] if "method" in c[2] else "") for c in CASES])
def test_allgather_equals_sync_server_simulator(which, workers, opts, eps, rcv, tmp_path):
    data = {"eps": eps, "rcv": rcv}[which]
    opts = dict(opts, epochs=1.0, seed=5)
    args = []
    for key, value in opts.items():
        args += ["--" + key.replace("_", "-"), value]
    out = tmp_path / "run.h5"
    run_mpi(workers, ["train", data, "--out", out, "--quiet", "--topology", "allgather", *args],
            timeout=180, check=True)
    run = read_run(out)
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, topology="allgather", **opts)), meta.n, meta.d, workers)
    shards = [read_shard(data, w, workers) for w in range(workers)]
    sim = simulate(cfg, [(s.X, s.y) for s in shards], meta.d, evaluate=False)
    assert run["attrs"]["status"] == "complete"
    assert run["attrs"]["workers"] == workers and run["attrs"]["ranks"] == workers
    assert bool(run["attrs"]["replicas_identical"])          # every rank's x, bit for bit
    assert np.array_equal(run["final"]["x"], sim.x)
    assert np.array_equal(run["final"]["xbar"], sim.xbar)
    assert np.array_equal(run["final"]["memory"], sim.memories)
    assert run["metrics"]["bytes_up"][-1] == sim.bytes_up.sum()
    assert run["metrics"]["bytes_down"][-1] == sim.bytes_down.sum()
    per_rank = json.loads(run["attrs"]["bytes_per_rank"])
    assert per_rank == [[int(u), int(d)] for u, d in zip(sim.bytes_up, sim.bytes_down)]
    fixed = Algorithm(cfg, meta.d, workers, compressor_for(cfg, meta.d), meta.n) \
        .fixed_message_bytes(meta.storage == "dense")
    if fixed >= 0:   # one Allgather of [size, message, padding] slots a round
        slot = 8 + -(-fixed // 8) * 8
        rounds = int(run["attrs"]["rounds"])
        assert per_rank == [[rounds * slot, rounds * (workers - 1) * slot]] * workers
    assert run["timing"]["seconds"].shape == (workers, 5)


def test_allgather_counts_the_slots_it_hands_mpi(eps, tmp_path):
    """rand-3 at W = 2 (the fixed-size path): each round a rank hands MPI_Allgather one slot of
    8 (size) + 12 (three float32 values) + 4 (padding to 8) = 24 bytes and receives the other
    rank's 24; RUN.h5 counts exactly that, and the simulator the same. Old code: 12 up and 20
    down a round (the padding and its own size word left out)."""
    out = tmp_path / "run.h5"
    opts = dict(compressor="rand_k", k=3, epochs=1.0, seed=5)
    run_mpi(2, ["train", eps, "--out", out, "--quiet", "--topology", "allgather",
                "--compressor", "rand_k", "--k", "3", "--epochs", "1", "--seed", "5"],
            timeout=180, check=True)
    run = read_run(out)
    rounds = int(run["attrs"]["rounds"])
    assert rounds == 1200 // 2
    assert json.loads(run["attrs"]["bytes_per_rank"]) == [[24 * rounds, 24 * rounds]] * 2
    assert (run["metrics"]["bytes_up"][-1], run["metrics"]["bytes_down"][-1]) == \
        (2 * 24 * rounds, 2 * 24 * rounds)
    meta = read_meta(eps)
    cfg = resolve(merge(dict(data=eps, topology="allgather", **opts)), meta.n, meta.d, 2)
    shards = [read_shard(eps, w, 2) for w in range(2)]
    sim = simulate(cfg, [(s.X, s.y) for s in shards], meta.d, evaluate=False)
    assert list(sim.bytes_up) == list(sim.bytes_down) == [24 * rounds] * 2
    assert np.array_equal(run["final"]["x"], sim.x)
