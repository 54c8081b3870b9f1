"""The paper's first figure at small scale (SPEC "Experiments" 1): on an epsilon-like set with
the paper's settings (gamma = 2, a = d/k, (a+t)^2 averaging, lambda = 1/n, the L2 term inside
the compressed vector), top-1 with memory tracks plain SGD while top-1 without memory stalls.
Runs the simulator, which the MPI tests prove bit-identical to `mpiexec ... mpimem train`."""
import pytest

from datasets import make_dataset
from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.run.simulate import simulate

PAPER = dict(schedule="decay", gamma=2.0, shift="d/k", averaging="quadratic", l2="worker")


@pytest.fixture(scope="module")
def eps2k(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("conv") / "eps.h5", "epsilon", 10000, 2000, seed=3)


def final_gap(data, **opts):
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, epochs=3, **dict(PAPER, **opts))), meta.n, meta.d, 1)
    shard = read_shard(data, 0, 1)
    result = simulate(cfg, [(shard.X, shard.y)], meta.d, fstar=meta.fstar_for(cfg.lam))
    return result.history[-1]["subopt_xbar"]


def test_top1_with_memory_tracks_sgd_and_without_memory_stalls(eps2k):
    sgd = final_gap(eps2k, compressor="none")
    mem = final_gap(eps2k, compressor="top_k", k=1)
    nomem = final_gap(eps2k, compressor="top_k", k=1, memory=False)
    assert 0 < sgd < 1e-2
    assert mem <= 1.5 * sgd, (mem, sgd)
    assert nomem >= 10 * sgd, (nomem, sgd)


def test_server_side_l2_reaches_the_paper_exact_update(eps2k, capsys, record_property):
    """The fast path (L2 as a scale on the server) ends within 1.25x of the paper-exact one.
    The measured ratio is printed (and recorded as a junit property) as the README's artifact."""
    fast = final_gap(eps2k, compressor="top_k", k=1, l2="server")
    exact = final_gap(eps2k, compressor="top_k", k=1, l2="worker")
    ratio = fast / exact
    record_property("l2_server_over_worker", ratio)
    with capsys.disabled():
        print(f"\n[measured] top-1, epsilon-like n=10000 d=2000, 3 epochs, W=1: f(xbar)-f* "
              f"--l2 server {fast:.6g} / --l2 worker {exact:.6g} = {ratio:.4f}")
    assert 0.8 <= ratio <= 1.25, (fast, exact)


def gap_w2(data, **opts):
    """f(xbar) - f* after 3 epochs, W = 2 workers, each method's default steps (simulator)."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, epochs=3, eval_every=3, **opts)), meta.n, meta.d, 2)
    shards = [read_shard(data, w, 2) for w in range(2)]
    result = simulate(cfg, [(s.X, s.y) for s in shards], meta.d, fstar=meta.fstar_for(cfg.lam))
    return result.history[-1]["subopt_xbar"]


@pytest.mark.parametrize("which", ["eps", "rcv"])
def test_ef21_with_top_k_converges_within_3x_of_sgd(which, eps, rcv, capsys):
    """EF21 (docs/spec.md "EF21") with top-k, k = d/2, W = 2, 3 epochs: f(xbar) - f* within 3x
    of plain SGD's. The ratios against SGD and Mem-SGD are printed, with those of k = d/10 and
    top-1, where EF21 lags far behind at b = 1 (measured, bench/results/methods.md): its
    estimate G changes in k coordinates a round and every round applies all of it."""
    data = {"eps": eps, "rcv": rcv}[which]
    d = read_meta(data).d
    sgd = gap_w2(data, compressor="none")
    ratios = {}
    for k in (d // 2, d // 10, 1):
        ef21 = gap_w2(data, compressor="top_k", k=k, method="ef21")
        mem = gap_w2(data, compressor="top_k", k=k)
        ratios[k] = (ef21 / sgd, ef21 / mem)
    with capsys.disabled():
        print(f"\n[measured] {which}-like d={d}, W=2, 3 epochs, EF21 top-k f(xbar)-f* over SGD / "
              "over Mem-SGD: " + ", ".join(f"k={k}: {a:.2f} / {b:.2f}"
                                            for k, (a, b) in ratios.items()))
    assert 0 < sgd < 1e-2
    assert ratios[d // 2][0] <= 3.0, ratios
