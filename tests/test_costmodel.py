"""analysis/costmodel.py: the alpha-beta fit reproduces the measurement docs/scaling.md quotes
within the error it states, a fresh ping-pong measures every size, and the model's predictions obey
bounds and limits derived by hand from its formulas (module docstring)."""
import json
import math
import re

import pytest

from analysis import costmodel as CM
from conftest import ROOT

RECORD = ROOT / "bench" / "results" / "costmodel.json"


def _stated():
    """alpha (s), B (B/s) and the fit error (fraction) as docs/scaling.md states them."""
    text = " ".join((ROOT / "docs" / "scaling.md").read_text().split())
    found = [re.search(pattern, text) for pattern in (
        r"alpha = ([\d.]+) us", r"B = ([\d.]+) GB/s",
        r"reproduces every measured size within \**(\d+)%")]
    assert all(found), "docs/scaling.md no longer states the fitted alpha, B and fit error"
    alpha, bw, err = (float(m.group(1)) for m in found)
    return alpha * 1e-6, bw * 1e9, err / 100


def test_fit_recovers_exact_alpha_beta():
    times = {m: 2e-6 + m / 5e9 for m in CM.SIZES}
    alpha, bw, err = CM.fit_alpha_beta(times)
    assert alpha == pytest.approx(2e-6, rel=1e-6) and bw == pytest.approx(5e9, rel=1e-6)
    assert err < 1e-9


def test_recorded_pingpong_fit_is_what_the_docs_state():
    """Refitting the recorded ping-pong medians gives the documented alpha and B, and every
    measured size within the documented error."""
    alpha, bw, stated = _stated()
    times = {int(m): t for m, t in json.loads(RECORD.read_text())["pingpong"].items()}
    fa, fb, err = CM.fit_alpha_beta(times)
    assert fa == pytest.approx(alpha, abs=0.005e-6) and fb == pytest.approx(bw, abs=0.005e9)
    assert err <= stated
    assert max(abs(fa + m / fb - t) / t for m, t in times.items()) == pytest.approx(err)


def test_fresh_pingpong_measures_every_size():
    """A fresh ping-pong over real MPI measures every size with a positive, finite time and
    yields a positive latency and bandwidth. How well it fits is a timing figure, measured by
    `python -m analysis.costmodel measure` (docs/scaling.md), not asserted here: the brief keeps
    timings out of tests, and load on a shared 2-core machine moves latency by tens of percent."""
    times = CM.measure_pingpong(reps=30, timeout=120)
    assert sorted(times) == sorted(CM.SIZES)
    assert all(math.isfinite(t) and t > 0 for t in times.values()), times
    alpha, bw, _ = CM.fit_alpha_beta(times)
    assert alpha > 0 and bw > 0, (alpha, bw, times)


def params(alpha=2e-6, bandwidth=2e9, c_a=5e-6):
    prof = {"c": 20e-6, "c_a": c_a}
    return {"alpha": alpha, "bandwidth": bandwidth, "d": 2000, "k": 10,
            "compute": {"top_k": prof, "rand_k": prof, "none": {"c": 20e-6, "c_a": 2 * c_a}}}


WS = (1, 2, 3, 8, 64, 1000, 10000)


def test_speedup_never_exceeds_the_worker_count():
    """Each design's round holds at least the compute c b of a sample batch, so samples/s <= W/c:
    speed-up = rate c <= W, equality only without communication."""
    p = params()
    for design in CM.DESIGNS:
        for comp in ("rand_k", "top_k", "none"):
            for w in WS:
                s = CM.predict(p, design, w, comp, 2000, 10)["speedup"]
                assert 0 < s < w, (design, comp, w, s)


def test_free_communication_gives_linear_speedup():
    """alpha = 0, B = inf, c_a = 0: the synchronous designs' round is c b, so speed-up = W."""
    p = params(alpha=0.0, bandwidth=math.inf, c_a=0.0)
    for design in ("sync", "allgather"):
        for w in WS:
            assert CM.predict(p, design, w, "rand_k", 2000, 10)["speedup"] == pytest.approx(w)


def test_sync_server_by_hand_and_its_serial_limit():
    """T_sync at W = 1 written out by hand; as W grows the serial receives bound the speed-up
    by c / (alpha + m/B + c_a) (m = 4k bytes for rand-k), approached from below."""
    p = params()
    c, alpha, B, c_a, m = 20e-6, 2e-6, 2e9, 5e-6, 40
    m_down = 8 * 10                                   # one worker's k = 10 entries, sparse
    t1 = c + (alpha + m / B) + c_a + 1 * (alpha + m_down / B)
    got = CM.predict(p, "sync", 1, "rand_k", 2000, 10)
    assert got["round_s"] == pytest.approx(t1, rel=1e-12)
    assert got["speedup"] == pytest.approx(c / t1, rel=1e-12)
    limit = c / (alpha + m / B + c_a)
    s = [CM.predict(p, "sync", w, "rand_k", 2000, 10)["speedup"] for w in WS + (10**6,)]
    assert all(a < b for a, b in zip(s, s[1:]))       # monotone in W
    assert s[-1] < limit and s[-1] == pytest.approx(limit, rel=1e-3)


def test_model_shape():
    p = params()
    # dense messages cost more on every design at scale
    for design in CM.DESIGNS:
        assert (CM.predict(p, design, 1024, "none", 2000, 10)["samples_per_s"]
                < CM.predict(p, design, 1024, "rand_k", 2000, 10)["samples_per_s"])
    # the sync server's round grows linearly in W (serial receives)
    t64 = CM.predict(p, "sync", 64, "rand_k", 2000, 10)["round_s"]
    t640 = CM.predict(p, "sync", 640, "rand_k", 2000, 10)["round_s"]
    assert t640 > 5 * t64
