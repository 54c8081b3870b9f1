"""Data-set layout: balanced blocks, shard reads that touch only their rows, MPI shards, synth."""
import io
import json
import sys

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import MPIEXEC, run, run_cli
from mpimem.data.dataset import block_range, read_meta, read_shard
from mpimem.data.synth import synthesize
from mpimem.errors import MpimemError


@pytest.mark.parametrize("n,parts", [(10, 3), (3, 5), (677_399, 7), (0, 2)])
def test_block_range_balanced_and_covering(n, parts):
    blocks = [block_range(n, parts, p) for p in range(parts)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


class CountingFile(io.RawIOBase):
    """A read-only binary file that counts the bytes read through it."""

    def __init__(self, path):
        self.f, self.name, self.bytes_read = open(path, "rb"), str(path), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, buf):
        count = self.f.readinto(buf)
        self.bytes_read += count
        return count


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sets")
    synthesize(folder / "eps.h5", "epsilon", n=9000, d=60, seed=3)
    synthesize(folder / "rcv.h5", "rcv1", n=30000, d=5000, seed=3)
    return folder


@pytest.mark.parametrize("name", ["eps.h5", "rcv.h5"])
def test_shard_reads_only_its_block(sets, name):
    path, parts = sets / name, 3
    whole = read_shard(path)
    with h5py.File(path) as f:
        item = f["X"].dtype.itemsize if "X" in f else f["data"].dtype.itemsize + 4
        chunks = [ds.chunks[0] * ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
                  for ds in f.values() if isinstance(ds, h5py.Dataset)]
    for part in range(parts):
        counter = CountingFile(path)
        shard = read_shard(counter, part, parts)
        rows = slice(shard.start, shard.stop)
        if isinstance(shard.X, np.ndarray):
            np.testing.assert_array_equal(shard.X, whole.X[rows])
            block_bytes = shard.X.size * item
        else:
            assert (shard.X != whole.X[rows]).nnz == 0
            block_bytes = shard.X.nnz * item + 8 * (shard.X.shape[0] + 1)
        np.testing.assert_array_equal(shard.y, whole.y[rows])
        # at most one partial chunk at each end of each dataset, plus metadata
        allowance = 2 * sum(chunks) + 64 * 1024
        labels_and_checksums = 9 * shard.y.size
        assert block_bytes / 4 < counter.bytes_read <= block_bytes + labels_and_checksums + allowance
        total = sum(chunks) * 4 + block_bytes * parts
        assert counter.bytes_read < total / 2


MPI_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
from mpimem.data.dataset import read_shard
comm = MPI.COMM_WORLD
shard = read_shard(sys.argv[1], comm.Get_rank(), comm.Get_size())
X = shard.X.toarray() if hasattr(shard.X, "toarray") else shard.X
rows = comm.gather((shard.start, shard.stop, X.astype(float).sum(axis=1).tolist(),
                    shard.y.tolist()), root=0)
if comm.Get_rank() == 0:
    print(json.dumps(rows))
"""


def test_mpi_ranks_read_disjoint_blocks_covering_the_file(sets, tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(MPI_SCRIPT)
    path = sets / "rcv.h5"
    proc = run([MPIEXEC, "-n", "3", sys.executable, script, path], check=True)
    rows = json.loads(proc.stdout)
    whole = read_shard(path)
    assert [(a, b) for a, b, *_ in rows] == [block_range(whole.y.size, 3, r) for r in range(3)]
    np.testing.assert_allclose(np.concatenate([r[2] for r in rows]),
                               np.asarray(whole.X.astype(float).sum(axis=1)).ravel(), rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([r[3] for r in rows]), whole.y)


def test_read_shard_detects_nan(tmp_path):
    path = tmp_path / "e.h5"
    synthesize(path, "epsilon", n=50, d=8, seed=0)
    with h5py.File(path, "r+") as f:
        f["X"][40, 3] = np.nan
    read_shard(path, 0, 2)
    with pytest.raises(MpimemError, match=r"e.h5: rows 25..49 contain NaN or Inf"):
        read_shard(path, 1, 2)


@pytest.mark.parametrize("like,d,density", [("epsilon", 300, 1.0), ("rcv1", 47_236, 0.0016)])
def test_synth_shape_norms_determinism(tmp_path, like, d, density):
    synthesize(tmp_path / "a.h5", like, n=4200, seed=7, d=d)
    synthesize(tmp_path / "b.h5", like, n=4200, seed=7, d=d)
    synthesize(tmp_path / "c.h5", like, n=5000, seed=7, d=d)
    synthesize(tmp_path / "d.h5", like, n=4200, seed=8, d=d)
    a, b, c, other = (read_shard(tmp_path / f"{k}.h5") for k in "abcd")
    meta = read_meta(tmp_path / "a.h5", labels=True)
    assert (meta.n, meta.d, meta.dtype) == (4200, d, "float32")
    assert meta.density == pytest.approx(density, rel=0.15)
    assert 0.3 < meta.n_positive / meta.n < 0.7
    def rows(X, stop=None):
        return sp.csr_matrix(X[:stop], dtype=np.float64)

    norms = np.sqrt(np.asarray(rows(a.X).multiply(rows(a.X)).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert (rows(a.X) != rows(b.X)).nnz == 0                     # same seed: same set
    assert (rows(a.X) != rows(c.X, 4200)).nnz == 0               # smaller n: a prefix
    np.testing.assert_array_equal(a.y, c.y[:4200])
    assert not np.array_equal(a.y, other.y)
    assert meta.fingerprint != read_meta(tmp_path / "d.h5").fingerprint


def test_info_prints_shape_balance_and_optimum(sets, tmp_path):
    path = tmp_path / "r.h5"
    synthesize(path, "rcv1", n=400, d=300, seed=1)
    run_cli(["data", "optimum", path, "--lam", "0.01"], check=True)
    out = run_cli(["data", "info", path], check=True).stdout
    meta = read_meta(path, labels=True)
    assert "n: 400" in out and "d: 300" in out and f"+1: {meta.n_positive}" in out
    assert "lambda: 0.01" in out and f"f*: {meta.fstar:.17g}" in out
    assert meta.fstar_for(0.01) == meta.fstar and meta.fstar_for(0.0100001) is None
    assert isinstance(read_shard(path).X, sp.csr_matrix)
