"""Bad settings are refused before any work: one line `mpimem: error: ...` from rank 0 only,
exit status 2 on every rank, no traceback, no run file left behind."""
import h5py
import numpy as np
import pytest

from conftest import run_mpi
from datasets import make_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("err") / "small.h5", "epsilon", 40, 8, optimum=False)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, small):
    path = tmp_path_factory.mktemp("err") / "nolabels.h5"
    with h5py.File(small) as src, h5py.File(path, "w") as dst:
        dst.attrs.update(src.attrs)
        dst["X"] = src["X"][()]
    return str(path)


@pytest.fixture(scope="module")
def with_nan(tmp_path_factory, small):
    """NaN in row 37 (the last worker's shard only), with that row's content checksum made
    to match, so that only the values check can refuse it."""
    from mpimem.data.checksum import row_checksums_dense

    path = tmp_path_factory.mktemp("err") / "nan.h5"
    with h5py.File(small) as src, h5py.File(path, "w") as dst:
        dst.attrs.update(src.attrs)
        for name in src:
            src.copy(name, dst)
        dst["X"][37, 3] = np.nan
        dst["checksum"][37] = row_checksums_dense(dst["X"][37:38], dst["y"][37:38])[0]
    return str(path)


def refused(nranks, args, tmp_path, expect, env=None):
    out = tmp_path / "run.h5"
    proc = run_mpi(nranks, ["train", *args, "--out", out], timeout=60, env=env or {})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mpimem: error: "), proc.stderr
    assert expect in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("args,expect", [
    (["--k", "9"], "1 <= k <= d = 8"),
    (["--k", "0"], "1 <= k <= d = 8"),
    (["--compressor", "nope"], "invalid choice: 'nope'"),
    (["--lam", "0"], "needs --lam > 0"),
    (["--lam", "-1", "--schedule", "bottou"], "--lam must be"),
    (["--bits", "1", "--compressor", "qsgd"], "--bits must be in 2..16"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--batch-size", "30"], "exceeds the smallest shard"),
    (["--shift", "abc"], "--shift must be a number"),
    (["--downlink-k", "9"], "--downlink-k must satisfy 1 <= K <= d = 8"),
    (["--downlink-k", "2", "--mode", "async"], "--downlink-k (server memory) needs the synchronous server"),
    (["--method", "ef21", "--mode", "async"], "--method ef21 needs --mode sync"),
    (["--method", "ef21", "--no-memory"], "--no-memory is for --method memsgd"),
    (["--k-warmup", "2", "--compressor", "qsgd"], "--k-warmup grows k: it needs --compressor top_k"),
    (["--checkpoint-every", "0"], "--checkpoint-every off writes no checkpoints"),
    (["--checkpoint-every", "0s"], "--checkpoint-every off writes no checkpoints"),
    (["--checkpoint-every", "off", "--keep-checkpoints", "-1"], "--keep-checkpoints must be >= 1"),
])
def test_bad_settings_are_refused(small, tmp_path, args, expect):
    refused(3, [small, *args], tmp_path, expect)


def test_more_workers_than_rows(tmp_path):
    tiny = make_dataset(tmp_path / "tiny.h5", "epsilon", 2, 4, optimum=False)
    refused(4, [tiny], tmp_path, "3 workers but the data set has only n = 2 rows")


def test_too_few_ranks(small, tmp_path):
    refused(1, [small], tmp_path, "needs at least 2 MPI ranks")


def test_missing_labels(unlabeled, tmp_path):
    refused(3, [unlabeled], tmp_path, "/y is missing")


def test_nan_in_one_workers_shard_stops_every_rank(with_nan, tmp_path):
    refused(3, [with_nan], tmp_path, "NaN or Inf")


def test_missing_data_file(tmp_path):
    refused(2, [tmp_path / "absent.h5"], tmp_path, "no such file")


def test_unwritable_output_directory(small, tmp_path):
    proc = run_mpi(2, ["train", small, "--out", tmp_path / "no" / "such" / "run.h5"], timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_toml_config_with_command_line_override(small, tmp_path):
    """Settings come from a TOML file; the command line overrides; the run file stores both merged."""
    from mpimem.run.runfile import read_run

    toml = tmp_path / "study.toml"
    toml.write_text('[train]\ncompressor = "rand_k"\nk = 3\nepochs = 0.5\nseed = 5\n')
    out = tmp_path / "run.h5"
    run_mpi(2, ["train", small, "--config", toml, "--k", "2", "--out", out, "--quiet"], check=True)
    cfg = read_run(out)["attrs"]["config"]
    assert (cfg["compressor"], cfg["k"], cfg["epochs"], cfg["seed"]) == ("rand_k", 2, 0.5, 5)
    toml.write_text('[train]\ncompresor = "rand_k"\n')
    (tmp_path / "typo").mkdir()
    refused(2, [small, "--config", toml], tmp_path / "typo", "unknown setting(s) compresor")


def test_world_of_the_wrong_size_is_refused(small, tmp_path):
    """MPIMEM_EXPECT_RANKS (set by the job scripts' users and by every test launch) catches a
    launcher that did not build one world of the expected size."""
    out = tmp_path / "run.h5"
    proc = run_mpi(2, ["train", small, "--out", out], timeout=60, env={"MPIMEM_EXPECT_RANKS": "3"})
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        "mpimem: error: MPI world has 2 rank(s) but MPIMEM_EXPECT_RANKS=3: the launcher did not "
        "start one MPI program (check srun --mpi=pmi2/pmix)"]


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_segment_seconds_is_one_line(small, tmp_path, value):
    """MPIMEM_SEGMENT_SECONDS (how often a compiled segment returns to Python) that is not a
    number of seconds >= 0 is refused before any work, on every rank, in one line."""
    refused(2, [small], tmp_path, "MPIMEM_SEGMENT_SECONDS must be a number of seconds >= 0",
            env={"MPIMEM_SEGMENT_SECONDS": value})


def test_expect_ranks_that_is_not_a_number_is_one_line_not_an_internal_error(small, tmp_path):
    refused(2, [small], tmp_path, "MPIMEM_EXPECT_RANKS must be a whole number of MPI ranks >= 1, "
            "got 'abc'", env={"MPIMEM_EXPECT_RANKS": "abc"})


def test_single_class_data_trains_with_one_note(tmp_path):
    """Every label +1: the run completes, and rank 0 says so once (a note, not an error)."""
    src = tmp_path / "one.svm"
    src.write_text("".join(f"+1 1:{0.1 + i / 50:.3f} 2:0.5\n" for i in range(40)))
    data, out = tmp_path / "one.h5", tmp_path / "run.h5"
    from conftest import run_cli
    run_cli(["data", "convert", src, data, "--dtype", "float32"], check=True)  # synth's dtype
    proc = run_mpi(3, ["train", data, "--out", out, "--quiet"], timeout=90)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "single class" in line]
    assert notes == ["mpimem: note: all 40 labels are +1: the data set has a single class "
                     "(logistic regression then only learns to push every row to +1; accuracy "
                     "is trivially 1)"], proc.stderr
