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
    interpreter = peak_rss_mib([sys.executable, "-c", "import mpimem.cli.data"])
    assert peaks[1] - peaks[0] < sizes[0] / 4, (peaks, sizes)
    assert peaks[1] - interpreter < sizes[1] / 2, (peaks, interpreter, sizes)


@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_convert_normalize_scales_rows_to_unit_norm(tmp_path, storage):
    """--normalize: every row x_i / ||x_i|| (oracle: numpy on scikit-learn's parse), zero rows
    stay zero, the file says so, and the row checksums verify over the stored values (read_shard
    checks them). Old code: no --normalize option (exit 2)."""
    X, y = random_problem(200, 30, 0.3, seed=5)
    X = X.tolil()
    X[7, :] = 0                                     # a row of zero norm
    X = X.tocsr()
    src, out = tmp_path / "n.svm", tmp_path / "n.h5"
    plain = write_svmlight(src, X, y)
    run_cli(["data", "convert", src, out, "--normalize", "--dtype", "float32",
             "--storage", storage, "--d", "30"], check=True)
    ref = load_svmlight_file(str(plain), n_features=30)[0].toarray()
    norms = np.linalg.norm(ref, axis=1, keepdims=True)
    expect = (ref / np.where(norms == 0, 1, norms)).astype(np.float32)
    shard = read_shard(out)                          # verifies the per-row checksums
    got = shard.X.toarray() if sp.issparse(shard.X) else shard.X
    np.testing.assert_array_equal(got, expect)
    row_norms = np.linalg.norm(got.astype(np.float64), axis=1)
    assert row_norms[7] == 0
    np.testing.assert_allclose(np.delete(row_norms, 7), 1.0, rtol=0, atol=4e-7)
    assert read_meta(out).normalized
    assert "normalized: yes" in run_cli(["data", "info", out], check=True).stdout
    run_cli(["data", "convert", src, tmp_path / "raw.h5"], check=True)
    assert not read_meta(tmp_path / "raw.h5").normalized


def test_index_base_auto_warns_when_column_0_would_be_empty(tmp_path):
    """--index-base auto warns (one stderr line) exactly when it guessed 1-based, i.e. no index
    0 appeared, so column 0 would be always empty under the other guess. Old code: silent."""
    one, zero = tmp_path / "one.svm", tmp_path / "zero.svm"
    one.write_bytes(b"+1 1:1 3:2\n-1 2:1\n")
    zero.write_bytes(b"+1 0:1 3:2\n-1 2:1\n")
    warned = run_cli(["data", "convert", one, tmp_path / "a.h5", "--index-base", "auto"],
                     check=True)
    lines = warned.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpimem: warning: --index-base auto chose 1")
    assert "column 0 would be always empty" in lines[0] and "--index-base 0" in lines[0]
    assert read_meta(tmp_path / "a.h5").d == 3
    for src, base in ((zero, "auto"), (one, "1"), (zero, "0")):
        quiet = run_cli(["data", "convert", src, tmp_path / f"{src.stem}{base}.h5",
                         "--index-base", base], check=True)
        assert quiet.stderr == "", (src, base, quiet.stderr)


def test_convert_and_optimum_progress_on_stderr(tmp_path):
    """A long conversion says how far it is (share of the input read, MB/s, then rows written)
    and the optimum its L-BFGS iterations; forced here by MPIMEM_PROGRESS_EVERY=0. At the
    default interval a sub-second conversion prints nothing. Old code: no progress at all."""
    X, y = random_problem(2000, 50, 0.1, seed=6)
    src, out = tmp_path / "p.svm", tmp_path / "p.h5"
    write_svmlight(src, X, y)
    proc = run_cli(["data", "convert", src, out, "--chunk-mb", "0.02"], check=True,
                   env={"MPIMEM_PROGRESS_EVERY": "0"})
    read = [l for l in proc.stderr.splitlines() if "% read (" in l]
    assert len(read) >= 5 and all(l.startswith("mpimem data convert: ") for l in read)
    assert "MB/s, line " in read[0] and read[-1].split(": ")[1].startswith("100% read")
    shares = [float(l.split(": ")[1].split("%")[0]) for l in read]
    assert shares == sorted(shares)
    assert any("writing 100% of 2000 rows" in l for l in proc.stderr.splitlines())
    quiet = run_cli(["data", "convert", src, tmp_path / "q.h5"], check=True)
    assert quiet.stderr == ""
    opt = run_cli(["data", "optimum", out], check=True, env={"MPIMEM_PROGRESS_EVERY": "0"})
    assert "mpimem data optimum: L-BFGS iteration 1, f = " in opt.stderr
    bad = run_cli(["data", "convert", src, tmp_path / "r.h5"], env={"MPIMEM_PROGRESS_EVERY": "x"})
    assert bad.returncode == 2 and bad.stderr.startswith("mpimem: error: MPIMEM_PROGRESS_EVERY")


# -- a UTF-8 byte-order mark (issue 18) ------------------------------------------------------
BOM_TEXT = b"\xef\xbb\xbf+1 1:0.5 2:1\n-1 3:2\n"


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_leading_utf8_bom_is_skipped(tmp_path, suffix):
    """A file saved by an editor that writes a BOM used to be refused as label 'ï»¿+1'."""
    src, out = tmp_path / f"bom.svm{suffix}", tmp_path / "bom.h5"
    src.write_bytes(gzip.compress(BOM_TEXT) if suffix else BOM_TEXT)
    proc = run_cli(["data", "convert", src, out])
    assert proc.returncode == 0, proc.stderr
    shard = read_shard(str(out))
    assert shard.y.tolist() == [1.0, -1.0]
    assert np.asarray(shard.X).tolist() == [[0.5, 1.0, 0.0], [0.0, 0.0, 2.0]]


def test_the_bom_is_skipped_by_the_compiled_and_the_python_parsers(monkeypatch):
    from mpimem.data import libsvm

    compiled = libsvm.parse_block(BOM_TEXT, 1, 1)
    monkeypatch.setattr(libsvm, "parse_compiled", lambda *args: None)   # the fallback parsers
    fallback = libsvm.parse_block(BOM_TEXT, 1, 1)
    for block in (compiled, fallback):
        assert block.labels.tolist() == [1.0, -1.0]
        assert block.indices.tolist() == [1, 2, 3] and block.values.tolist() == [0.5, 1.0, 2.0]
    with pytest.raises(libsvm.LineError, match="non-numeric label"):   # only before line 1
        libsvm.parse_block(b"+1 1:1\n\xef\xbb\xbf-1 1:1\n", 1, 1)


@pytest.mark.parametrize("storage", ["csr", "dense"])
@pytest.mark.parametrize("normalize", [False, True])
def test_convert_bias_appends_a_constant_feature(tmp_path, storage, normalize):
    """--bias B (liblinear's -B): column d of every row is B, after --normalize; the first d
    columns are the rows as without it (oracle: scikit-learn's parse); the file and `data info`
    say so, and the row checksums verify. Old code: no --bias option (exit 2)."""
    X, y = random_problem(150, 20, 0.3, seed=9)
    src, out = tmp_path / "b.svm", tmp_path / "b.h5"
    plain = write_svmlight(src, X, y)
    run_cli(["data", "convert", src, out, "--bias", "2.5", "--storage", storage, "--d", "20",
             *(["--normalize"] if normalize else [])], check=True)
    ref = load_svmlight_file(str(plain), n_features=20)[0].toarray()
    if normalize:
        norms = np.linalg.norm(ref, axis=1, keepdims=True)
        ref = ref / np.where(norms == 0, 1, norms)
    shard = read_shard(out)                          # verifies the per-row checksums
    got = shard.X.toarray() if sp.issparse(shard.X) else shard.X
    assert got.shape == (150, 21)
    np.testing.assert_allclose(got[:, :20], ref, rtol=1e-14, atol=0)   # float64 norms: the
    assert np.array_equal(got[:, :20] != 0, ref != 0)                   # order of the sums
    assert np.all(got[:, 20] == 2.5)
    meta = read_meta(out)
    assert meta.d == 21 and meta.bias == 2.5
    assert storage == "dense" or meta.nnz == X.nnz + 150
    assert "bias: 2.5" in run_cli(["data", "info", out], check=True).stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_convert_bias_must_be_positive(tmp_path, value):
    X, y = random_problem(10, 5, 0.5, seed=1)
    src = tmp_path / "b.svm"
    write_svmlight(src, X, y)
    proc = run_cli(["data", "convert", src, tmp_path / "b.h5", "--bias", value])
    assert proc.returncode == 2 and "--bias" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.h5").exists()
