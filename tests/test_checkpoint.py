"""Checkpoints: contents, checksum, keep-K, resume bit-identical to an uninterrupted run,
refusals (workers, data set, settings), unwritable / full checkpoint directory."""
import os
import shutil
import sys

import h5py
import numpy as np
import pytest

from conftest import run_mpi
from datasets import make_dataset
from mpimem.run import checkpoint as CK
from mpimem.run.config import parse_every
from mpimem.errors import MpimemError
from mpimem.run.runfile import read_run


@pytest.fixture(scope="module")
def eps(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eps") / "eps.h5", "epsilon", 600, 50, optimum=False)


def train(nranks, data, out, *opts, check=True, **kw):
    args = ["train", *([data] if data else []), "--out", out, "--quiet", *opts]
    return run_mpi(nranks, args, timeout=180, check=check, **kw)


def same_final(a, b):
    fa, fb = read_run(a)["final"], read_run(b)["final"]
    assert set(fa) == {"x", "xbar", "memory"} and set(fb) == set(fa)
    for key in fa:
        assert np.array_equal(fa[key], fb[key]), key


# ---------------------------------------------------------------------- options
def test_parse_every():
    assert parse_every("500") == (500, None)
    assert parse_every("30s") == (None, 30.0)
    assert parse_every("5m") == (None, 300.0)
    assert parse_every("off") == (None, None)
    for bad in ("abc", "1.5", "-3", "0s"):
        with pytest.raises(MpimemError, match="--checkpoint-every"):
            parse_every(bad)


# ---------------------------------------------------------------------- the file, in-process
def write_some(directory, rounds, keep=2):
    writer = CK.CheckpointWriter(str(directory), keep)
    rng = np.random.default_rng(0)
    for r in rounds:
        attrs = {"round": r, "workers": 2, "config": "{}", "dataset_fingerprint": "f",
                 "elapsed": 1.0}
        server = {"z": rng.standard_normal(50), "s": np.float64(0.5)}
        workers = [{"m": rng.standard_normal(50), "perm": np.arange(10)} for _ in range(2)]
        writer.write(attrs, server, workers, {"round": [0.0, r]})
    return writer


def test_atomic_write_keeps_last_k_and_verifies(tmp_path):
    write_some(tmp_path / "c", [100, 200, 300, 400], keep=2)
    names = sorted(os.listdir(tmp_path / "c"))
    assert names == ["ckpt-000000300.h5", "ckpt-000000400.h5"]  # no temporary left over
    ck = CK.load(str(tmp_path / "c" / names[-1]))
    assert ck["attrs"]["round"] == 400 and ck["server"]["z"].shape == (50,)
    assert len(ck["workers"]) == 2 and list(ck["metrics"]["round"]) == [0.0, 400.0]


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "attribute"])
def test_damaged_checkpoint_refused_and_older_one_used(tmp_path, damage):
    write_some(tmp_path / "c", [100, 200], keep=2)
    newest = tmp_path / "c" / "ckpt-000000200.h5"
    if damage == "bitflip":  # flip one bit inside the data of /server/z
        with h5py.File(newest, "r") as h5:
            offset = h5["server/z"].id.get_offset()
        with open(newest, "r+b") as fh:
            fh.seek(offset + 17)
            byte = fh.read(1)[0]
            fh.seek(offset + 17)
            fh.write(bytes([byte ^ 0x04]))
    elif damage == "truncate":
        size = os.path.getsize(newest)
        with open(newest, "r+b") as fh:
            fh.truncate(size // 2)
    else:
        with h5py.File(newest, "r+") as h5:
            h5.attrs["round"] = 150
    with pytest.raises(MpimemError, match="damaged"):
        CK.load(str(newest))
    found, notes, _ = CK.locate(str(tmp_path / "c"))
    assert found["attrs"]["round"] == 100 and len(notes) == 1 and "ckpt-000000200" in notes[0]


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIMEM_FAULT", "full-disk-at-checkpoint:2")
    with pytest.raises(OSError):
        write_some(tmp_path / "c", [100, 200])
    assert os.listdir(tmp_path / "c") == ["ckpt-000000100.h5"]
    CK.load(str(tmp_path / "c" / "ckpt-000000100.h5"))


# ---------------------------------------------------------------------- resume under MPI
CASES = [
    ("rcv", 2, ["--compressor", "top_k", "--k", "10", "--l2", "server", "--epochs", "1.5"], 200,
     400),                                                                       # top-k index path
    ("eps", 3, ["--compressor", "qsgd", "--bits", "4", "--averaging", "uniform",
                "--epochs", "2"], 100, 200),                                         # rng_quant
    ("rcv", 2, ["--compressor", "rand_k", "--k", "5", "--l2", "worker", "--batch-size", "2",
                "--epochs", "1"], 100, 100),
    ("eps", 2, ["--compressor", "top_k", "--k", "3", "--downlink-k", "4", "--epochs", "2"],
     100, 200),                                                                  # server memory
    ("eps", 2, ["--method", "ef21", "--k", "2", "--epochs", "2"], 100, 200),    # h_w and G
    ("rcv", 2, ["--method", "ef21", "--k", "10", "--downlink-k", "8", "--epochs", "1.5"],
     200, 400),                                                                  # EF21-BC
    ("eps", 2, ["--compressor", "rand_k", "--k", "2", "--k-warmup", "2", "--epochs", "3"],
     100, 200),                                                                  # k warm-up
]


@pytest.mark.mpi_core
@pytest.mark.parametrize("which,workers,opts,every,start", CASES,
                         ids=["rcv-W2-topk-pool", "eps-W3-qsgd", "rcv-W2-randk-l2worker",
                              "eps-W2-downlink", "eps-W2-ef21", "rcv-W2-ef21-bc",
                              "eps-W2-warmup"])
def test_resume_is_bit_identical(which, workers, opts, every, start, rcv, eps, tmp_path):
    data = {"rcv": rcv, "eps": eps}[which]
    ref = tmp_path / "ref.h5"
    train(workers + 1, data, ref, "--seed", "3", "--checkpoint-every", str(every),
          "--keep-checkpoints", "50", *opts)
    ckdir = tmp_path / "ref.ckpt"
    rounds = read_run(ref)["attrs"]["rounds"]
    kept = sorted(os.listdir(ckdir))
    expected = sorted({f"ckpt-{r:09d}.h5" for r in range(every, rounds + 1, every)} |
                      {f"ckpt-{rounds:09d}.h5"})
    assert kept == expected
    ck = CK.load(str(ckdir / f"ckpt-{start:09d}.h5"))
    assert ck["attrs"]["workers"] == workers and len(ck["workers"]) == workers
    assert {"z", "s", "timing"} <= set(ck["server"])
    assert {"m", "perm", "cursor", "rng_sample", "rng_quant", "bytes_up", "bytes_down"} <= \
        set(ck["workers"][0])
    # resume a copy of the run from its checkpoint at `start`
    shutil.copy(ckdir / f"ckpt-{start:09d}.h5", tmp_path / "mid.h5")
    out = tmp_path / "resumed.h5"
    proc = train(workers + 1, None, out, "--resume", tmp_path / "mid.h5")
    assert f"resuming from {tmp_path / 'mid.h5'} (round {start})" in proc.stderr
    same_final(ref, out)
    a, b = read_run(ref), read_run(out)
    assert b["attrs"]["status"] == "complete" and b["attrs"]["resumed"] == 1
    for name in ("round", "samples", "bytes_up", "bytes_down", "loss_x", "loss_xbar"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name


@pytest.fixture(scope="module")
def done_run(rcv, tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run.h5"
    train(3, rcv, out, "--epochs", "0.5", "--checkpoint-every", "100", "--k", "4")
    return out


def test_resume_refuses_other_workers_data_or_settings(done_run, tmp_path):
    other = make_dataset(tmp_path / "other.h5", "rcv1", 1200, 3000, seed=2, optimum=False)
    cases = [
        (4, [], "the checkpoint has W = 2 workers, this launch has W = 3"),
        (3, [other], "not the data set the checkpoint was trained on"),
        (3, ["--k", "5"], "--k 5 differs from the checkpoint's 4"),
    ]
    for nranks, extra, message in cases:
        proc = run_mpi(nranks, ["train", *extra, "--resume", done_run, "--quiet"], timeout=120)
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpimem: error")]
        assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr


def test_unwritable_checkpoint_directory_refused_before_training(rcv, tmp_path):
    (tmp_path / "run.ckpt").write_text("not a directory")
    proc = train(3, rcv, tmp_path / "run.h5", "--checkpoint-every", "50", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("mpimem: error") == 1
    assert "checkpoint directory" in proc.stderr and "not writable" in proc.stderr
    assert not (tmp_path / "run.h5").exists()


def test_full_disk_mid_run_is_a_clear_error(rcv, tmp_path):
    out = tmp_path / "run.h5"
    proc = train(3, rcv, out, "--epochs", "0.5", "--checkpoint-every", "100", check=False,
                 env={"MPIMEM_FAULT": "full-disk-at-checkpoint:2"})
    assert proc.returncode == 2, proc.stderr
    assert "cannot write a checkpoint" in proc.stderr and "at round 200" in proc.stderr
    assert "ckpt-000000100.h5 is intact" in proc.stderr
    assert read_run(out)["attrs"]["status"] == "failed"
    assert os.listdir(tmp_path / "run.ckpt") == ["ckpt-000000100.h5"]
    CK.load(str(tmp_path / "run.ckpt" / "ckpt-000000100.h5"))


def test_server_state_round_trip_through_a_checkpoint_file(tmp_path):
    """mpimem.run.server_state.ServerState: state_dict() -> checkpoint file -> load_state() restores
    every field in place (iterate, averager, downlink memory, timing; the async counters with
    the change log, dense entries and an empty one included); a misshapen array is refused."""
    from mpimem.core.model import Averager, Replica
    from mpimem.run.server_state import AsyncCounters, ServerState

    rng = np.random.default_rng(1)

    def state(d=7, fill=True):
        srv = ServerState(Replica(d), Averager(d), np.zeros(d), np.zeros(5), AsyncCounters(2))
        if fill:
            srv.replica.z[:], srv.replica.s = rng.standard_normal(d), 0.75
            srv.averager.S[:], srv.averager.Cmark[:] = rng.standard_normal((2, d))
            srv.averager.C, srv.averager.wsum = 2.5, 9.0
            srv.downlink[:], srv.timing[:] = rng.standard_normal(d), rng.random(5)
            c = srv.counters
            c.applied, c.msg_count[:], c.last_pull[:] = 9, (0, 4, 5), (0, 7, 9)
            c.staleness = np.array([3, 0, 6])
            c.log[:] = [(8, np.array([1, 5])), (9, None), (10, np.zeros(0, np.int64))]
        return srv

    saved = state()
    writer = CK.CheckpointWriter(str(tmp_path / "c"), 2)
    path = writer.write({"round": 9, "workers": 0, "config": "{}", "elapsed": 1.0},
                        saved.state_dict(), [], {})
    loaded = state(fill=False)
    loaded.load_state(CK.load(path)["server"])
    a, b = saved.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert [(n, None if i is None else list(i)) for n, i in loaded.counters.log] == \
        [(8, [1, 5]), (9, None), (10, [])]
    with pytest.raises(ValueError, match="shape"):
        state(d=8, fill=False).load_state(a)


# ---------------------------------------------------------------------- no lost runs
def test_pruning_keeps_verified_checkpoints_and_never_the_newest(tmp_path):
    """A damaged and a foreign checkpoint with high round numbers are neither counted as kept
    nor deleted; the good checkpoints of this run written after them survive."""
    directory = tmp_path / "c"
    writer = CK.CheckpointWriter(str(directory), 2, run_id="this")
    other = CK.CheckpointWriter(str(tmp_path / "other"), 2, run_id="other")
    state = ({"z": np.zeros(5), "s": np.float64(1.0)}, [{"m": np.ones(5)}], {"round": [0.0]})

    def write(w, r):
        return w.write({"round": r, "workers": 1, "config": "{}", "elapsed": 1.0}, *state)

    write(writer, 100)
    (directory / "ckpt-000050000.h5").write_bytes(b"damaged")
    shutil.copy(write(other, 40000), directory)
    write(writer, 200)
    write(writer, 300)
    names = sorted(os.listdir(directory))
    assert names == ["ckpt-000000200.h5", "ckpt-000000300.h5", "ckpt-000040000.h5",
                     "ckpt-000050000.h5"]
    assert CK.load(str(directory / "ckpt-000000300.h5"))["attrs"]["run_id"] == "this"
    writer.keep = 1
    write(writer, 400)  # the checkpoint just written is never the one deleted
    assert sorted(os.listdir(directory))[0] == "ckpt-000000400.h5"
    assert not (directory / "ckpt-000000300.h5").exists()


DRIVER = """
import json, os, pickle, sys
from mpi4py import MPI
largest = [0]
def dumps(obj, *protocol):
    data = pickle.dumps(obj, *protocol)
    largest[0] = max(largest[0], len(data))
    return data
MPI.pickle.__init__(dumps, pickle.loads)
from mpimem.cli import main
status = main(sys.argv[2:])
with open(os.path.join(sys.argv[1], f"rank{MPI.COMM_WORLD.Get_rank()}"), "w") as fh:
    fh.write(str(largest[0]))
sys.exit(status)
"""


def test_no_d_vector_is_pickled(rcv, tmp_path):
    """The final gather and the checkpoint gather/scatter move arrays as buffers: the largest
    pickle any rank makes (during training with checkpoints, and a resume) is far below one
    d-vector (d = 3000: 24,000 bytes)."""
    from conftest import MPIEXEC, run
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run.h5"
    launches = [["train", rcv, "--out", out, "--epochs", "0.5", "--checkpoint-every", "100",
                 "--keep-checkpoints", "9"],
                ["train", "--resume", tmp_path / "run.ckpt" / "ckpt-000000200.h5", "--out", out]]
    for i, args in enumerate(launches):
        sizes = tmp_path / f"sizes{i}"
        sizes.mkdir()
        run([MPIEXEC, "-n", "3", sys.executable, driver, sizes, *args, "--quiet"], timeout=180,
            check=True, env={"MPIMEM_EXPECT_RANKS": "3"})
        largest = [int((sizes / f"rank{r}").read_text()) for r in range(3)]
        assert max(largest) < 3000 * 8 / 4, largest
    assert read_run(out)["attrs"]["status"] == "complete"


def test_resume_of_a_copied_run_writes_the_copy_only(done_run, tmp_path):
    """--resume COPY.h5 continues COPY.h5 with COPY.ckpt/, says so, and leaves the original
    run (whose path the checkpoints record) untouched; the result is bit-identical."""
    src_ckpt = CK.checkpoint_dir(done_run)
    before = {p: open(p, "rb").read() for p in [str(done_run)] + CK.list_checkpoints(src_ckpt)}
    copy = tmp_path / "copy.h5"
    shutil.copy(done_run, copy)
    shutil.copytree(src_ckpt, tmp_path / "copy.ckpt")
    os.remove(tmp_path / "copy.ckpt" / "ckpt-000000300.h5")  # continue from round 200
    proc = run_mpi(3, ["train", "--resume", copy, "--quiet"], timeout=180, check=True)
    assert f"writing {copy} and {tmp_path / 'copy.ckpt'}/" in proc.stderr
    assert {p: open(p, "rb").read() for p in before} == before
    assert sorted(os.listdir(src_ckpt)) == ["ckpt-000000200.h5", "ckpt-000000300.h5"]
    assert read_run(copy)["attrs"]["resumed"] == 1
    same_final(done_run, copy)


def test_checkpoints_of_another_run_are_refused(done_run, rcv, tmp_path):
    other = tmp_path / "other.h5"
    train(3, rcv, other, "--epochs", "0.2", "--k", "4", "--checkpoint-every", "off")
    foreign = CK.list_checkpoints(CK.checkpoint_dir(done_run))[0]
    proc = run_mpi(3, ["train", "--resume", foreign, "--out", other, "--quiet"], timeout=120)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpimem: error")]
    assert proc.returncode == 2 and len(err) == 1 and "belongs to another run" in err[0], proc.stderr
    os.mkdir(tmp_path / "other.ckpt")
    shutil.copy(foreign, tmp_path / "other.ckpt")
    proc = run_mpi(3, ["train", "--resume", other, "--quiet"], timeout=120)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpimem: error")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "no valid checkpoint of this run" in err[0] and "belongs to another run" in err[0]
    assert read_run(other)["attrs"]["status"] == "complete" and "resumed" not in \
        read_run(other)["attrs"]


def test_new_run_never_inherits_checkpoints(done_run, rcv, tmp_path):
    out = tmp_path / "run.h5"
    shutil.copy(done_run, out)
    shutil.copytree(CK.checkpoint_dir(done_run), tmp_path / "run.ckpt")
    opts = ["--epochs", "0.2", "--k", "4"]
    proc = train(3, rcv, out, *opts, check=False)  # an existing run file is never replaced
    assert proc.returncode == 2 and "the run file exists; give --overwrite" in proc.stderr
    os.remove(out)                                 # a run file gone, its checkpoints left
    proc = train(3, rcv, out, *opts, check=False)
    assert proc.returncode == 2 and "checkpoint(s) of another run" in proc.stderr
    assert proc.stderr.count("mpimem: error") == 1 and not out.exists()
    train(3, rcv, out, *opts, "--overwrite", "--checkpoint-every", "off")
    assert CK.list_checkpoints(tmp_path / "run.ckpt") == []  # the old run's are gone
    proc = run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=120)
    assert proc.returncode == 2 and "no checkpoints" in proc.stderr
