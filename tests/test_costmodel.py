"""analysis/costmodel.py: the alpha-beta fit reproduces its own measurements within the stated
error, and the model's predictions have the right shape."""
import pytest

from analysis import costmodel as CM

STATED_FIT_ERROR = 1.0   # docs/scaling.md: the ping-pong fit is within 100% at every size here


def test_fit_recovers_exact_alpha_beta():
    times = {m: 2e-6 + m / 5e9 for m in CM.SIZES}
    alpha, bw, err = CM.fit_alpha_beta(times)
    assert alpha == pytest.approx(2e-6, rel=1e-6) and bw == pytest.approx(5e9, rel=1e-6)
    assert err < 1e-9


def test_fit_reproduces_a_measured_pingpong_within_the_stated_error():
    times = CM.measure_pingpong(reps=30, timeout=120)
    alpha, bw, err = CM.fit_alpha_beta(times)
    assert alpha > 0 and bw > 0
    assert err <= STATED_FIT_ERROR
    for m, t in times.items():
        assert abs(alpha + m / bw - t) / t <= STATED_FIT_ERROR


def params():
    prof = {"c": 20e-6, "c_a": 5e-6}
    return {"alpha": 2e-6, "bandwidth": 2e9, "d": 2000, "k": 10,
            "compute": {"top_k": prof, "rand_k": prof, "none": {"c": 20e-6, "c_a": 10e-6}}}


def test_model_shape():
    p = params()
    for design in CM.DESIGNS:
        s = [CM.predict(p, design, w, "rand_k", 2000, 10)["speedup"] for w in (1, 8, 64, 10000)]
        assert s[0] < 1.0                       # one worker pays communication on top of compute
        assert s[1] > s[0]                      # more workers help at first
        assert s[-1] <= 10000
    # dense messages cost more on every design at scale
    for design in CM.DESIGNS:
        assert (CM.predict(p, design, 1024, "none", 2000, 10)["samples_per_s"]
                < CM.predict(p, design, 1024, "rand_k", 2000, 10)["samples_per_s"])
    # the sync server's round grows linearly in W (serial receives)
    t64 = CM.predict(p, "sync", 64, "rand_k", 2000, 10)["round_s"]
    t640 = CM.predict(p, "sync", 640, "rand_k", 2000, 10)["round_s"]
    assert t640 > 5 * t64
