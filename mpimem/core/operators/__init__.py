"""The compression operators of SPEC "Compression operators": one module per operator, and the
table below that names them (the folder listing is the feature list).

A worker turns its v (held in its memory m) into the message u, writes the bytes handed to MPI
and keeps m := v - u (Algorithm 1); the server adds the decoded u to its aggregate. Shared wire
rules (sparse or dense, the server's union of coordinates) are mpimem.core.wire.

Their uplinks (one row each; the downlink's rule: mpimem.core.wire):

| operator  | uplink message                                   | bytes              |
|-----------|--------------------------------------------------|--------------------|
| none      | float32 dense v, or int32 idx + float32 vals of its nonzeros, whichever is smaller | min(4d, 8 nnz) |
| top_k     | k int32 indices, then k float32 values          | 8k                 |
| rand_k    | k float32 values; indices from the shared seed  | 4k                 |
| qsgd/ternary | float32 scale, then d codes of (1 sign + ceil(log2(s+1)) level) bits | 4 + ceil(d bits / 8) |
| sign      | float32 scale ||v||_1/d, then d sign bits        | 4 + ceil(d / 8)    |

What an operator module provides:

- `CODE`, its op code: a small integer, distinct from every other module's (qsgd and ternary
  share quantiser.py's), the value of P[P_OP] (mpimem.core.layout) that selects its branch of
  the dispatch in mpimem.core.step;
- three compiled functions (numba, `@njit(cache=CACHE)`) of one signature each, called by
  mpimem.core.step's dispatch (one line per operator and function):
    encode(P, m, ws, cs, worker, r) -> bytes    u = comp(v) for v in m into ws's message
                                                 buffer (ws[W_MSG]); m := v - u
    agg_add(P, agg, cs, msg, nbytes, worker, r)  the server's acc += u (mpimem.core.wire's
                                                 agg_add_sparse, or agg_set_dense + decode_add)
    decode_add(P, cs, msg, nbytes, worker, r, acc)  acc += u, u dense float64 (EF21's h_w)
  P is the run's parameters (its slots: mpimem.core.layout), ws a worker's state tuple, cs the
  operator's scratch tuple, worker and r the sender and its round (rand-k's shared indices);
- a Python class, a subclass of base.Compressor, holding:
    name, code                  the --compressor name and CODE
    build(d, k, levels, memory, seed)   the instance for dimension d; MpimemError if impossible
    max_message_bytes()         the largest message (the worker's buffer, the server's union)
    fill_params(P), scratch(workers)    its parameters into P; its scratch tuple cs
    fixed_size(every_coordinate, memory)  whether every message has max_message_bytes()
    resolve(cfg, d)             validation of its options in the settings (k = d if it has none)
    contraction_rounds(cfg, d)  1/delta: the default shift a in rounds
    steps                       default (schedule, gamma) with and without memory
    label(cfg, bits), bits_per_entry(cfg, d)  a run's label; bits per entry (quantisers)
    sparsifier, quantiser, takes_levels, keeps_memory   what the settings and commands read
  and the docstring stating its mathematics.

Adding one: docs/design.md "Recipe: add a compression operator".
"""
from mpimem.core.operators.identity import Identity
from mpimem.core.operators.quantiser import QSGD, Ternary
from mpimem.core.operators.rand_k import RandK
from mpimem.core.operators.sign import ScaledSign
from mpimem.core.operators.top_k import TopK
from mpimem.errors import MpimemError

# THE table: --compressor name -> operator class (the order of --help and of the error message)
OPERATORS = {
    "none": Identity,
    "top_k": TopK,
    "rand_k": RandK,
    "qsgd": QSGD,
    "ternary": Ternary,
    "sign": ScaledSign,
}
COMPRESSORS = tuple(OPERATORS)
SPARSIFIERS = tuple(name for name, op in OPERATORS.items() if op.sparsifier)
assert all(op.name == name for name, op in OPERATORS.items())


def make_compressor(name: str, d: int, k: int = None, levels: int = None, memory: bool = True,
                    seed: int = 0):
    """The operator `name` for dimension d; raises MpimemError for impossible settings."""
    if name not in OPERATORS:
        raise MpimemError(f"unknown compressor '{name}'; choose one of {', '.join(COMPRESSORS)}")
    return OPERATORS[name].build(d, k=k, levels=levels, memory=memory, seed=seed)
