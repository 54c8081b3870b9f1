"""MPI called from compiled (numba) code, cacheable: the libmpi that mpi4py loaded, by address.

The table is mpimem.core.clock's (its clock slots first, so `now` reads it) extended with
libmpi's functions and the communicator's handles.

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
from numba import njit

from mpimem.core.clock import (CLOCK_SLOTS, TIMESPEC, _call3, _call4, _call5, _call6, _call7,
                               _call8, clock_table)
from mpimem.core.kernels import CACHE

# slots of the table after the clock's (mpimem.core.clock)
(SEND, RECV, BCAST, IRECV, WAITANY, ALLGATHER, ALLGATHERV, GET_COUNT, COMM, BYTE,
 SLOTS) = range(CLOCK_SLOTS, CLOCK_SLOTS + 11)
STATUS = SLOTS            # an MPI_Status buffer (16 words: larger than any MPI's status)


def table(mpi: bool = True, comm=None) -> np.ndarray:
    """The int64 table of function addresses and MPI handles for this process (mpi=False: the
    clock only, for in-process loops that never call MPI); its calls go to `comm` (an mpi4py
    communicator; default COMM_WORLD): one table per communicator."""
    t = clock_table(STATUS + 16)
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
