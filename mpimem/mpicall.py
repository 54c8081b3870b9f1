"""MPI called from compiled (numba) code, cacheable: the libmpi that mpi4py loaded, by address.

numba-mpi (PyPI) binds MPI functions as ctypes globals, which numba cannot cache ("dynamic
globals"): every process would compile every loop that calls MPI again (3.1-3.3 s a launch,
measured here; bench/results/mpicall.md). Here the addresses of the few MPI functions the loops
need travel as data, an int64 table `mpi` built once per process by `table()`, and an
intrinsic emits an indirect call through that address, so compiled loops stay in numba's
on-disk cache, and a round costs the same as with numba-mpi. The functions are looked up
through mpi4py's own extension module (dlsym searches the libmpi it was linked or loaded
with), so they are those of the MPI that mpi4py uses, whichever it is.

ABI: every argument is passed as a 64-bit integer: pointers as addresses, and C `int` or MPI
handles (an `int` in MPICH, a pointer in Open MPI) as their value. On x86-64 and AArch64 an
`int` argument occupies the low half of its 64-bit register, so one call form serves both
handle kinds. Buffers are the addresses of contiguous numpy arrays (`arr.ctypes.data`).
"""
import ctypes

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels import CACHE

# slots of the table
(CLOCK, USLEEP, SEND, RECV, BCAST, IRECV, WAITANY, ALLGATHER, ALLGATHERV, GET_COUNT,
 COMM, BYTE, SLOTS) = range(13)
TIMESPEC = SLOTS          # two int64 words for clock_gettime
STATUS = SLOTS + 2        # an MPI_Status buffer (16 words: larger than any MPI's status)
CLOCK_MONOTONIC = 1       # Linux


def table(mpi: bool = True, comm=None) -> np.ndarray:
    """The int64 table of function addresses and MPI handles for this process (mpi=False: the
    clock only, for in-process loops that never call MPI); its calls go to `comm` (an mpi4py
    communicator; default COMM_WORLD): one table per communicator."""
    t = np.zeros(STATUS + 16, np.int64)
    libc = ctypes.CDLL(None)
    t[CLOCK] = ctypes.cast(libc.clock_gettime, ctypes.c_void_p).value
    t[USLEEP] = ctypes.cast(libc.usleep, ctypes.c_void_p).value
    if not mpi:
        return t
    from mpi4py import MPI

    libmpi = ctypes.CDLL(MPI.__file__)   # dlsym searches the extension's libmpi
    for slot, name in ((SEND, "MPI_Send"), (RECV, "MPI_Recv"), (BCAST, "MPI_Bcast"),
                       (IRECV, "MPI_Irecv"), (WAITANY, "MPI_Waitany"),
                       (ALLGATHER, "MPI_Allgather"), (ALLGATHERV, "MPI_Allgatherv"),
                       (GET_COUNT, "MPI_Get_count")):
        t[slot] = ctypes.cast(getattr(libmpi, name), ctypes.c_void_p).value
    t[COMM] = _handle(MPI.COMM_WORLD if comm is None else comm)
    t[BYTE] = _handle(MPI.BYTE)
    return t


def _handle(obj) -> int:
    """An MPI handle as the int64 the calls pass: mpi4py reports an `int` handle (MPICH)
    as an unsigned number (0xffffffff84000002 for a split communicator), so it is read back
    as the signed 32-bit value; a pointer handle (Open MPI) as a signed 64-bit one."""
    from mpi4py import MPI

    value = MPI._handleof(obj)
    if MPI._sizeof(type(obj)) == 4:
        return ctypes.c_int32(value & 0xFFFFFFFF).value
    return ctypes.c_int64(value).value


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
def now(mpi):
    """Monotonic seconds (clock_gettime): the timing columns of compiled loops."""
    _call2(mpi[CLOCK], np.int64(CLOCK_MONOTONIC), mpi[TIMESPEC:].ctypes.data)
    return mpi[TIMESPEC] + 1e-9 * mpi[TIMESPEC + 1]


@njit(cache=CACHE)
def sleep(mpi, seconds):
    """usleep(seconds): the MPIMEM_SLOW_WORKER test hook inside compiled loops."""
    if seconds > 0.0:
        _call1(mpi[USLEEP], np.int64(seconds * 1e6))


@njit(cache=CACHE)
def status_ptr(mpi):
    return mpi[STATUS:].ctypes.data


@njit(cache=CACHE)
def send(mpi, buf, nbytes, dest, tag):
    """MPI_Send of the first nbytes of the uint8 array buf."""
    return _call6(mpi[SEND], buf.ctypes.data, np.int64(nbytes), mpi[BYTE], np.int64(dest),
                  np.int64(tag), mpi[COMM])


@njit(cache=CACHE)
def recv(mpi, buf, nbytes, source, tag):
    """MPI_Recv of at most nbytes into the uint8 array buf (the message may be shorter)."""
    return _call7(mpi[RECV], buf.ctypes.data, np.int64(nbytes), mpi[BYTE], np.int64(source),
                  np.int64(tag), mpi[COMM], status_ptr(mpi))


@njit(cache=CACHE)
def bcast(mpi, buf, nbytes, root):
    """MPI_Bcast of the first nbytes of the uint8 array buf from root."""
    return _call5(mpi[BCAST], buf.ctypes.data, np.int64(nbytes), mpi[BYTE], np.int64(root),
                  mpi[COMM])


@njit(cache=CACHE)
def allgather(mpi, sendbuf, nbytes, recvbuf):
    """MPI_Allgather of nbytes from each rank into recvbuf (rank order, nbytes apart)."""
    return _call7(mpi[ALLGATHER], sendbuf.ctypes.data, np.int64(nbytes), mpi[BYTE],
                  recvbuf.ctypes.data, np.int64(nbytes), mpi[BYTE], mpi[COMM])


@njit(cache=CACHE)
def allgatherv(mpi, sendbuf, nbytes, recvbuf, counts, displs):
    """MPI_Allgatherv of nbytes from each rank: rank w's bytes land at recvbuf[displs[w]:]
    (counts, displs: C int arrays, np.int32)."""
    return _call8(mpi[ALLGATHERV], sendbuf.ctypes.data, np.int64(nbytes), mpi[BYTE],
                  recvbuf.ctypes.data, counts.ctypes.data, displs.ctypes.data, mpi[BYTE],
                  mpi[COMM])


@njit(cache=CACHE)
def received_bytes(mpi):
    """MPI_Get_count(status of the last recv, MPI_BYTE): the length of the message received."""
    _call3(mpi[GET_COUNT], status_ptr(mpi), mpi[BYTE], mpi[TIMESPEC:].ctypes.data)
    return np.int64(mpi[TIMESPEC:TIMESPEC + 1].view(np.int32)[0])


@njit(cache=CACHE)
def irecv(mpi, buf, nbytes, source, tag, request):
    """MPI_Irecv of at most nbytes into the uint8 array buf; the request handle is written at
    the start of the uint8 array `request` (MPI._sizeof(MPI.Request) bytes: an int in MPICH,
    a pointer in Open MPI)."""
    return _call7(mpi[IRECV], buf.ctypes.data, np.int64(nbytes), mpi[BYTE], np.int64(source),
                  np.int64(tag), mpi[COMM], request.ctypes.data)


@njit(cache=CACHE)
def waitany(mpi, count, requests):
    """MPI_Waitany over the `count` request handles packed in the uint8 array `requests`: the
    index of the request that completed (MPI sets its handle to MPI_REQUEST_NULL); its status
    is the one received_bytes reads."""
    _call4(mpi[WAITANY], np.int64(count), requests.ctypes.data, mpi[TIMESPEC:].ctypes.data,
           status_ptr(mpi))
    return np.int64(mpi[TIMESPEC:TIMESPEC + 1].view(np.int32)[0])
