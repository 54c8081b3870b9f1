"""The compiled LIBSVM block parser (mpimem/data/libsvm_kernels.py) is exact: on random blocks
of mixed number formats, signs, exponents at the edge of its shortcut (|e| = 22, 23), tabs,
carriage returns, comments and blank lines, every block it accepts gives the same arrays, bit
for bit (dtype, shape, bytes: -0.0 keeps its sign), as the line-by-line reference parser
(independent: Python's float() per token); the blocks it declines go to the other paths."""
import random

import numpy as np

from mpimem.data.libsvm import _parse_lines
from mpimem.data.libsvm_kernels import parse_compiled


def _number(rng):
    kind = rng.randrange(6)
    x = rng.uniform(-1e3, 1e3) * 10.0 ** rng.randrange(-30, 30)
    if kind == 0:
        return repr(x)
    if kind == 1:
        return f"{x:.7g}"
    if kind == 2:
        return f"{x:.17g}"
    if kind == 3:
        return f"{x:e}"
    if kind == 4:
        return rng.choice(["0", "-0", "0.0", ".5", "5.", "+3", "-.25e-3", "1E5", "007",
                           "0.000000000000000000000001234"])
    return f"{rng.randrange(10 ** rng.randrange(1, 19))}" + rng.choice(["", "e-22", "e22", "e-23", ".0"])


def _block(rng):
    lines = []
    for _ in range(rng.randrange(1, 6)):
        idx = sorted(rng.sample(range(1, 100), rng.randrange(0, 5)))
        label = rng.choice(["1", "-1", "+1", "0", "2", "1.0", "-1e0"])
        sep = rng.choice([" ", "\t", "  "])
        lines.append(label + "".join(f"{sep}{i}:{_number(rng)}" for i in idx)
                     + rng.choice(["", "", " # c:x", "#z", "\r"]))
        if rng.random() < 0.1:
            lines.append(rng.choice(["", "# only", " "]))
    return ("\n".join(lines) + "\n").encode()


def test_compiled_parser_equals_the_reference_on_every_block_it_accepts():
    rng = random.Random(1)
    accepted = 0
    for _ in range(600):
        buf = _block(rng)
        got = parse_compiled(buf, 5, 1)
        if got is None:
            continue
        accepted += 1
        ref = _parse_lines(buf, 5, 1)
        for name, x, y in zip(("labels", "indptr", "indices", "values", "lines"), got,
                              (ref.labels, ref.indptr, ref.indices, ref.values, ref.lines)):
            assert x.dtype == y.dtype and x.shape == y.shape, (name, buf)
            assert (x.view(np.uint8) == y.view(np.uint8)).all(), (name, buf, x, y)
    assert accepted >= 50, accepted   # the fast path is really exercised
