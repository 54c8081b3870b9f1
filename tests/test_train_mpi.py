"""`mpiexec -n W+1 mpimem train` against the in-process simulator, bit for bit (W = 1..4),
with exact byte accounting, replicas identical to the server's x, and the run file's layout."""
import h5py
import numpy as np
import pytest

from conftest import run_mpi, run_cli
from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.run.runfile import read_run
from mpimem.run.simulate import simulate


def cli_args(opts):
    args = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, value]
    return args


def assert_equals_simulator(run, sim, workers):
    """A complete run file of W workers equals the simulator's run bit for bit: every replica
    equal to rank 0's, x, xbar, every memory, the byte totals."""
    assert run["attrs"]["status"] == "complete" and run["attrs"]["workers"] == workers
    assert bool(run["attrs"]["replicas_identical"])
    assert np.array_equal(run["final"]["x"], sim.x)
    assert np.array_equal(run["final"]["xbar"], sim.xbar)
    assert np.array_equal(run["final"]["memory"], sim.memories)
    assert run["metrics"]["bytes_up"][-1] == sim.bytes_up.sum()
    assert run["metrics"]["bytes_down"][-1] == sim.bytes_down.sum()


def oracle(data, workers, opts):
    """The simulator's run of the same settings on the same shards."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, **opts)), meta.n, meta.d, workers)
    shards = [read_shard(data, w, workers) for w in range(workers)]
    return simulate(cfg, [(s.X, s.y) for s in shards], meta.d, evaluate=False)


CASES = [
    ("eps", 1, dict(compressor="top_k", k=1)),
    ("eps", 2, dict(compressor="top_k", k=3, batch_size=4, l2="server")),  # the fast path
    ("eps", 3, dict(compressor="qsgd", bits=4, memory=True)),
    ("eps", 4, dict(compressor="rand_k", k=2)),
    ("eps", 2, dict(compressor="top_k", k=2, l2="worker", averaging="uniform")),
    ("rcv", 2, dict(compressor="top_k", k=10, l2="server")),  # the incremental top-k index (mpimem.core.topk_index)
    ("rcv", 3, dict(compressor="rand_k", k=10, memory=False)),
    ("rcv", 1, dict(compressor="none", schedule="bottou", gamma=1.0)),
    ("rcv", 2, dict(compressor="sign", schedule="constant", gamma=0.05, averaging="none")),
    ("rcv", 3, dict(compressor="top_k", k=10, downlink_k=8)),  # server memory on the downlink
    ("eps", 2, dict(compressor="ternary", l2="worker", schedule="bottou", gamma=1.0)),
    # EF21 (docs/spec.md "EF21"), EF21-BC (with --downlink-k), the k warm-up
    ("eps", 2, dict(compressor="top_k", k=2, batch_size=2, method="ef21")),
    ("rcv", 2, dict(compressor="rand_k", k=10, l2="server", method="ef21")),
    ("eps", 3, dict(compressor="qsgd", bits=4, method="ef21")),
    ("rcv", 2, dict(compressor="top_k", k=10, downlink_k=8, method="ef21")),
    ("rcv", 2, dict(compressor="top_k", k=10, l2="server", k_warmup=1)),
    ("eps", 2, dict(compressor="rand_k", k=3, k_warmup=1, method="ef21")),
]


def case_id(which, workers, opts):
    """eps-W2-top_k, with -ef21, -bc (EF21-BC) and -warmup where they apply."""
    tags = [opts.get("method", ""), "bc" if opts.get("method") and "downlink_k" in opts else "",
            "warmup" if opts.get("k_warmup") else ""]
    return "-".join([which, f"W{workers}", opts["compressor"], *filter(None, tags)])


@pytest.mark.mpi_core
@pytest.mark.parametrize("which,workers,opts", CASES, ids=[case_id(*c) for c in CASES])
def test_mpi_run_equals_simulator_bit_for_bit(which, workers, opts, eps, rcv, tmp_path):
    data = {"eps": eps, "rcv": rcv}[which]
    opts = dict(opts, epochs=1.5, seed=7)
    out = tmp_path / "run.h5"
    proc = run_mpi(workers + 1, ["train", data, "--out", out, "--quiet", *cli_args(opts)],
                   timeout=180, check=True)
    assert proc.stdout == ""  # --quiet: nobody prints
    run = read_run(out)
    assert_equals_simulator(run, oracle(data, workers, opts), workers)
    assert run["timing"]["seconds"].shape == (workers + 1, 5)


@pytest.mark.parametrize("workers", [1, 3])
def test_segments_cut_by_time_leave_the_trajectory_unchanged(workers, rcv, tmp_path):
    """MPIMEM_SEGMENT_SECONDS=0: rank 0 ends every compiled segment after one round (the
    header's stop mark, mpimem.comm.segments), so every round goes through the Python boundary.
    The run must still equal the simulator bit for bit, bytes included (a worker that misread
    the marked header, or a boundary that skipped or repeated a round, would not)."""
    opts = dict(compressor="top_k", k=4, batch_size=2, epochs=0.5, seed=3, eval_every=0.25)
    out = tmp_path / "run.h5"
    run_mpi(workers + 1, ["train", rcv, "--out", out, "--quiet", *cli_args(opts)], timeout=180,
            check=True, env={"MPIMEM_SEGMENT_SECONDS": "0"})
    run, sim = read_run(out), oracle(rcv, workers, opts)
    assert np.array_equal(run["final"]["x"], sim.x)
    assert np.array_equal(run["final"]["xbar"], sim.xbar)
    assert run["metrics"]["bytes_down"][-1] == sim.bytes_down.sum()


def test_byte_counts_follow_the_wire_formula(eps, tmp_path):
    """top-k: 8k bytes up per worker and round; down: 8-byte length + 8 bytes per union entry."""
    out = tmp_path / "run.h5"
    run_mpi(3, ["train", eps, "--out", out, "--quiet", "--compressor", "top_k", "--k", "5",
                "--samples", 600], check=True)
    run = read_run(out)
    rounds = run["attrs"]["rounds"]
    assert rounds == 300
    assert run["metrics"]["bytes_up"][-1] == 2 * rounds * 8 * 5
    down = run["metrics"]["bytes_down"][-1]
    # the union of two workers' 5 indices has 5..10 entries each round
    assert 2 * rounds * (8 + 8 * 5) <= down <= 2 * rounds * (8 + 8 * 10)
    assert (down - 2 * rounds * 8) % 16 == 0


def test_ef21_bc_byte_counts_follow_the_wire_formula(eps, tmp_path):
    """EF21-BC (docs/spec.md): 8k bytes up per worker and round, and down the 8-byte header
    plus D = top-K of the server's error (K int32 + float32 entries: 8K < 4d here)."""
    out = tmp_path / "run.h5"
    run_mpi(3, ["train", eps, "--out", out, "--quiet", "--method", "ef21", "--k", "5",
                "--downlink-k", "4", "--samples", 600], check=True)
    run = read_run(out)
    rounds = run["attrs"]["rounds"]
    assert rounds == 300 and run["attrs"]["method"] == "ef21"
    assert run["metrics"]["bytes_up"][-1] == 2 * rounds * 8 * 5
    assert run["metrics"]["bytes_down"][-1] == 2 * rounds * (8 + 8 * 4)
    settings = run_cli(["info", out], check=True).stdout.splitlines()[2]
    assert "method ef21" in settings and "downlink-k 4" in settings, settings


@pytest.mark.mpi_core
def test_run_file_layout_and_info(eps, tmp_path):
    out = tmp_path / "run.h5"
    proc = run_mpi(3, ["train", eps, "--out", out, "--epochs", 1, "--eval-every", 0.25], check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("mpimem train: 2 workers") and len(lines) == 6  # header + 5 points
    with h5py.File(out) as h5:
        assert h5.attrs["format"] == "mpimem-run" and h5.attrs["status"] == "complete"
        assert list(h5["metrics/epoch"][()]) == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert h5.attrs["mpi_version"].startswith(("MPICH", "Open MPI", "Intel(R) MPI"))
        assert np.isfinite(h5.attrs["fstar"])
        subopt = h5["metrics/subopt_xbar"][()]
        assert np.all(subopt[1:] > 0) and subopt[-1] < subopt[1]
    info = run_cli(["info", out], check=True)
    assert "status complete" in info.stdout and "f(xbar)-f*" in info.stdout


def test_downlink_compression_sends_k_entries_and_still_converges(rcv, tmp_path):
    """--downlink-k K: every round each worker receives the 8-byte length and K (idx, value)
    pairs; the server's memory keeps the rest, so f(xbar) - f* stays within 2x of the exact
    downlink's."""
    runs = {}
    for name, extra in (("exact", []), ("down", ["--downlink-k", "6"])):
        out = tmp_path / f"{name}.h5"
        run_mpi(3, ["train", rcv, "--out", out, "--quiet", "--k", "10", "--epochs", 2,
                    "--l2", "server", *extra], check=True)  # the bound was measured on this path
        runs[name] = read_run(out)
    rounds = runs["down"]["attrs"]["rounds"]
    assert runs["down"]["metrics"]["bytes_down"][-1] == 2 * rounds * (8 + 8 * 6)
    assert runs["exact"]["metrics"]["bytes_down"][-1] > 2 * rounds * (8 + 8 * 10)
    gap = {k: v["metrics"]["subopt_xbar"][-1] for k, v in runs.items()}
    assert 0 < gap["down"] <= 2 * gap["exact"], gap
