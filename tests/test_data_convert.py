"""`mpimem data convert`: exact equality with scikit-learn's parser, options, bounded memory."""
import bz2
import gzip
import lzma
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file, load_svmlight_file

from conftest import mpimem_cmd, run_cli
from mpimem.data.dataset import read_meta, read_shard
from mpimem.data.libsvm import _parse_fast, _parse_lines

OPENERS = {"": open, ".svm": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def random_problem(n, d, density, seed, labels=(-1, 1)):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=rng)
    X.data = rng.normal(size=X.nnz) * 10.0 ** rng.integers(-8, 8, X.nnz)
    return X, rng.choice(labels, n)


def write_svmlight(path, X, y, zero_based=False, comment_every=0):
    """LIBSVM text of (X, y) at `path` (compressed by its extension); every
    `comment_every`-th line gets a comment and a blank line. Returns the plain text's path."""
    plain = path.with_name(path.name + ".plain")
    dump_svmlight_file(X, y, str(plain), zero_based=zero_based)
    lines = plain.read_bytes().splitlines(keepends=True)
    if comment_every:
        lines = [line.rstrip(b"\n") + b"  # note\n\n" if i % comment_every == 0 else line
                 for i, line in enumerate(lines)]
    plain.write_bytes(b"# header comment\n" + b"".join(lines))
    with OPENERS[path.suffix if path.suffix in OPENERS else ""](path, "wb") as dst:
        dst.write(plain.read_bytes())
    return plain


@pytest.mark.parametrize("ext", ["", ".gz", ".bz2", ".xz"])
def test_convert_equals_sklearn_csr(tmp_path, ext):
    X, y = random_problem(700, 300, 0.05, seed=1)
    src, out = tmp_path / f"a.svm{ext}", tmp_path / "a.h5"
    plain = write_svmlight(src, X, y, comment_every=7)
    proc = run_cli(["data", "convert", src, out, "--chunk-mb", "0.01"], check=True)
    assert "storage=csr" in proc.stdout
    ref_X, ref_y = load_svmlight_file(str(plain), zero_based=False, n_features=300)
    shard = read_shard(out)
    assert shard.X.dtype == np.float64 and shard.X.indices.dtype == np.int32
    assert (shard.X != ref_X).nnz == 0 and np.array_equal(shard.X.data, ref_X.tocsr().data)
    assert np.array_equal(shard.y, ref_y)
    meta = read_meta(out)
    assert (meta.n, meta.d, meta.index_base, meta.storage) == (700, 300, 1, "csr")
    with open(src, "rb") as f:
        assert meta.source_bytes == len(f.read())


@pytest.mark.parametrize("labels", [(0, 1), (1, 2), (-1, 1)])
def test_convert_dense_zero_based_and_label_maps(tmp_path, labels):
    X, y = random_problem(300, 40, 0.6, seed=2, labels=labels)
    src, out = tmp_path / "b.svm", tmp_path / "b.h5"
    write_svmlight(src, X, y, zero_based=True)
    run_cli(["data", "convert", src, out, "--index-base", "auto", "--dtype", "float32"],
            check=True)
    shard = read_shard(out)
    assert isinstance(shard.X, np.ndarray) and shard.X.dtype == np.float32
    assert shard.X.flags.c_contiguous
    np.testing.assert_array_equal(shard.X, X.toarray().astype(np.float32)[:, :shard.X.shape[1]])
    np.testing.assert_array_equal(shard.y, np.where(y == labels[1], 1.0, -1.0))
    assert read_meta(out).index_base == 0


def test_convert_options_d_storage_and_empty_rows(tmp_path):
    src, out = tmp_path / "c.svm", tmp_path / "c.h5"
    src.write_bytes(b"+1 1:0.5 3:-2e-3\n-1\n# only a comment\n1 2:7   # tail\r\n-1 3:1")
    run_cli(["data", "convert", src, out, "--d", "5", "--storage", "dense"], check=True)
    shard = read_shard(out)
    np.testing.assert_array_equal(shard.X, [[0.5, 0, -2e-3, 0, 0], [0] * 5, [0, 7, 0, 0, 0],
                                            [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(shard.y, [1, -1, 1, -1])


def test_fast_and_reference_parsers_agree():
    X, y = random_problem(200, 50, 0.2, seed=3)
    lines = [f"{label:+g} " + " ".join(f"{j + 1}:{float(v)!r}" for j, v in zip(row.indices, row.data))
             for label, row in zip(y, X)]
    buf = ("\n".join(lines) + "\n").encode()
    fast, slow = _parse_fast(buf, 10, 1), _parse_lines(buf, 10, 1)
    assert fast is not None
    for key in ("labels", "indptr", "indices", "values", "lines"):
        np.testing.assert_array_equal(getattr(fast, key), getattr(slow, key))
    np.testing.assert_array_equal(fast.values, X.data)


def peak_rss_mib(cmd):
    """Run `cmd`; its own peak resident set size in MiB (from wait4's rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
    return usage.ru_maxrss / 1024


def test_convert_streams_in_bounded_memory(tmp_path):
    """Peak RSS stays flat when the text triples (40 -> 120 MB) and stays well under the
    text's size: the converter streams."""
    rng = np.random.default_rng(4)
    row = " ".join(f"{j}:{v:.17g}" for j, v in zip(range(1, 401), rng.normal(size=400)))
    block = "".join(f"{s} {row}\n" for s in ("+1", "-1") * 500).encode()
    peaks, sizes = [], []
    for name, megabytes in (("medium", 40), ("large", 120)):
        src = tmp_path / f"{name}.svm"
        with open(src, "wb") as f:
            for _ in range(megabytes * 2**20 // len(block) + 1):
                f.write(block)
        sizes.append(src.stat().st_size / 2**20)
        peaks.append(peak_rss_mib(mpimem_cmd("data", "convert", src, tmp_path / f"{name}.h5",
                                             "--chunk-mb", "0.25", "--storage", "csr")))
        assert read_meta(tmp_path / f"{name}.h5").nnz == 400 * read_meta(tmp_path / f"{name}.h5").n
    interpreter = peak_rss_mib([sys.executable, "-c", "import mpimem.data.cli"])
    assert peaks[1] - peaks[0] < sizes[0] / 4, (peaks, sizes)
    assert peaks[1] - interpreter < sizes[1] / 2, (peaks, interpreter, sizes)
