"""Default settings that converge: with nothing but the operator chosen, every compressor brings
f(xbar) clearly below f(0) on small epsilon-like and RCV1-like sets (3 epochs, W = 2), at b = 1
and b = 16; the k = d operators (quantisers, sign, plain SGD) get within 10% of f(0) - f*.
Steps left unset resolve per operator (mpimem.core.schedule.DEFAULT_STEPS) and per mode."""
import pytest

from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.run.simulate import simulate

OPERATORS = [dict(compressor="top_k"), dict(compressor="rand_k"), dict(compressor="qsgd"),
             dict(compressor="ternary"), dict(compressor="sign"), dict(compressor="none")]
DENSE_ONES = ("qsgd", "ternary", "sign", "none")   # k = d: the old default gave them a = 1 round


def gaps(data, workers=2, **opts):
    """(f(0) - f*, f(xbar) - f*) of a 3-epoch simulated run with the given options only."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, epochs=3, **opts)), meta.n, meta.d, workers)
    shards = [read_shard(data, w, workers) for w in range(workers)]
    hist = simulate(cfg, [(s.X, s.y) for s in shards], meta.d, fstar=meta.fstar_for(cfg.lam)).history
    return hist[0]["subopt_xbar"], hist[-1]["subopt_xbar"]


@pytest.mark.parametrize("which", ["eps", "rcv"])
@pytest.mark.parametrize("opts", OPERATORS, ids=[o["compressor"] for o in OPERATORS])
def test_each_operator_converges_with_its_default_steps(opts, which, eps, rcv):
    data = {"eps": eps, "rcv": rcv}[which]
    for b in (1, 16):
        start, end = gaps(data, batch_size=b, **opts)
        limit = 0.1 if opts["compressor"] in DENSE_ONES else (0.5 if b == 1 else 1.0)
        assert 0 < end < limit * start, (b, end, start)


def test_unset_steps_resolve_per_operator_and_given_ones_are_kept():
    def steps(**opts):
        cfg = resolve(merge(dict(data="-", **opts)), 1000, 400, 2)
        return cfg.schedule, cfg.gamma, cfg.shift, cfg.l2
    assert steps(compressor="top_k", k=4) == ("decay", 2.0, 100.0, "worker")   # paper: a = d/k
    assert steps(compressor="rand_k", k=4) == ("bottou", 1.0, 100.0, "worker")
    assert steps(compressor="ternary", batch_size=2) == ("decay", 2.0, 2 * 21.0, "worker")
    assert steps(compressor="qsgd", memory=False)[:2] == ("bottou", 1.0)       # paper's QSGD
    assert steps(compressor="none") == ("decay", 2.0, 1.0, "worker")
    assert steps(compressor="ternary", gamma=0.5)[:2] == ("decay", 0.5)
    assert steps(compressor="top_k", schedule="bottou")[:2] == ("bottou", 1.0)
    assert steps(compressor="top_k", schedule="decay", mode="async")[:2] == ("decay", 2.0)
    async_cfg = resolve(merge(dict(data="-", mode="async")), 1000, 400, 2)
    assert (async_cfg.schedule, async_cfg.gamma) == ("bottou", 1.0)
    assert len(async_cfg.extra["notes"]) == 1
