"""The layouts of the arrays and tuples the compiled steps take (mpimem.core.step): the slots of
the parameter array P, of a worker's state tuple `ws`, of its counters and timing columns.

Its own module so that the operators (mpimem.core.operators), which read their slots of P and
ws, and mpimem.core.step, which dispatches to them, share one layout without importing each
other's way round. numba freezes these numbers into the compiled functions that read them.
"""

# slots of P
(P_OP, P_K, P_D, P_B, P_LAM, P_L2_SERVER, P_MEMORY, P_SCHEDULE, P_GAMMA, P_SHIFT, P_AVERAGING,
 P_LEVELS, P_BITS, P_DIVISOR, P_WORKERS, P_MSG_BYTES, P_METHOD, P_BC, P_SIZE) = range(19)
# P_BC: 1 for EF21-BC (EF21 with the --downlink-k memory), else 0
# a worker's state tuple `ws` (mpimem.run.algorithm.WorkerState.arrays): where segments find these
W_RNG_QUANT, W_CAND, W_MSG, W_TOPK, W_COUNTERS, W_TIMING, W_V = 4, 7, 8, 9, 10, 11, 12
# slots of a worker's counters (int64)
C_UP, C_DOWN, C_NCAND = range(3)
# timing columns (mpimem.run.algorithm.TIMING_COLUMNS)
T_GRADIENT, T_COMPRESSION, T_COMMUNICATION, T_WAITING, T_EVALUATION = range(5)
