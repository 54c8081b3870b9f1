"""The clock of compiled loops, and calls of C functions by address from compiled code.

A compiled loop cannot call Python's clock, and numba's cache refuses ctypes globals; so the
address of libc's `clock_gettime` (and `usleep`) travels as data, in an int64 table built once
per process (`clock_table`), and an intrinsic emits an indirect call through it. The timing
columns of every loop (gradient, compression, ...) read `now(table)`. mpimem.comm.mpicall extends
the same table with libmpi's functions and uses the same call intrinsics (`_call1`..`_call8`).

ABI: every argument is passed as a 64-bit integer: pointers as addresses, C `int` as its value
(an `int` argument occupies the low half of its 64-bit register on x86-64 and AArch64).
"""
import ctypes

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mpimem.core.kernels import CACHE

# slots of the table: the clock's first (mpimem.comm.mpicall appends the MPI slots)
CLOCK, USLEEP, TIMESPEC, CLOCK_SLOTS = 0, 1, 2, 4   # TIMESPEC: two int64 words
CLOCK_MONOTONIC = 1       # Linux


def clock_table(size: int = CLOCK_SLOTS) -> np.ndarray:
    """An int64 table of `size` slots whose clock slots hold libc's clock_gettime and usleep:
    the whole table of in-process loops that never call MPI."""
    t = np.zeros(max(size, CLOCK_SLOTS), np.int64)
    libc = ctypes.CDLL(None)
    t[CLOCK] = ctypes.cast(libc.clock_gettime, ctypes.c_void_p).value
    t[USLEEP] = ctypes.cast(libc.usleep, ctypes.c_void_p).value
    return t


def _codegen(restype, nargs):
    """An indirect call of the address in the first argument with nargs int64 arguments."""
    def codegen(context, builder, signature, llargs):
        ret = context.get_value_type(restype)
        i64 = context.get_value_type(types.int64)
        fnty = cgutils.ir.FunctionType(ret, [i64] * nargs)
        ptr = builder.inttoptr(llargs[0], fnty.as_pointer())
        return builder.call(ptr, [a if a.type.width == 64 else builder.sext(a, i64)
                                  for a in llargs[1:]])
    return codegen


@intrinsic
def _call8(typingctx, fn, a, b, c, d, e, f, g, h):
    return types.int32(fn, a, b, c, d, e, f, g, h), _codegen(types.int32, 8)


@intrinsic
def _call1(typingctx, fn, a):
    return types.int32(fn, a), _codegen(types.int32, 1)


@intrinsic
def _call2(typingctx, fn, a, b):
    return types.int32(fn, a, b), _codegen(types.int32, 2)


@intrinsic
def _call3(typingctx, fn, a, b, c):
    return types.int32(fn, a, b, c), _codegen(types.int32, 3)


@intrinsic
def _call4(typingctx, fn, a, b, c, d):
    return types.int32(fn, a, b, c, d), _codegen(types.int32, 4)


@intrinsic
def _call5(typingctx, fn, a, b, c, d, e):
    return types.int32(fn, a, b, c, d, e), _codegen(types.int32, 5)


@intrinsic
def _call6(typingctx, fn, a, b, c, d, e, f):
    return types.int32(fn, a, b, c, d, e, f), _codegen(types.int32, 6)


@intrinsic
def _call7(typingctx, fn, a, b, c, d, e, f, g):
    return types.int32(fn, a, b, c, d, e, f, g), _codegen(types.int32, 7)


@njit(cache=CACHE)
def now(clk):
    """Monotonic seconds (clock_gettime): the timing columns of compiled loops."""
    _call2(clk[CLOCK], np.int64(CLOCK_MONOTONIC), clk[TIMESPEC:].ctypes.data)
    return clk[TIMESPEC] + 1e-9 * clk[TIMESPEC + 1]


@njit(cache=CACHE)
def sleep(clk, seconds):
    """usleep(seconds): the MPIMEM_SLOW_WORKER test hook inside compiled loops."""
    if seconds > 0.0:
        _call1(clk[USLEEP], np.int64(seconds * 1e6))
