"""One error type for every problem a user can fix, the one-line report of it, and how one
failing rank ends a whole MPI job.

Inside an MPI world of more than one rank, an exception that is not an agreed MpimemError
(`mpimem.run.driver.agree`: every rank stops at the same point) means one rank failed while the
others may be waiting for it in a collective: `abort_world` then reports one line (rank-
prefixed for internal errors), runs the `at_abort` hooks (rank 0 marks its run file "failed")
and calls COMM_WORLD.Abort, which ends every rank of the job (mpimem.cli).

Test hook MPIMEM_FAULT (docs/checkpoints.md): 'raise-at:PLACE:RANK[:N]' raises RuntimeError
on rank RANK the Nth time (default: the first) it reaches PLACE; 'sleep-at:PLACE:SECONDS'
makes every rank sleep SECONDS the first time it reaches PLACE. Places: start-up (before the
heavy imports), write_pidfile, warm-up (before the compile warm-up), restore (checkpoint
restore), attrs, metrics_so_far, evaluate, shutdown (after the last round's sync point).
"""
import os
import sys
import time


class MpimemError(Exception):
    """A problem with the user's input or environment: reported as one line, exit status 2.

    The message names the thing at fault (file, line number, option) and what is wrong with it.
    agreed=True: raised after every rank agreed to stop here (mpimem.run.driver.agree), so no rank
    is left waiting and the command simply returns its status.
    """

    exit_status = 2

    def __init__(self, message, agreed=False):
        super().__init__(message)
        self.agreed = agreed


def report(message: str, stream=None) -> None:
    """Print the one-line error report `mpimem: error: <message>`."""
    stream = stream or sys.stderr
    line = " ".join(str(message).split("\n"))
    print(f"mpimem: error: {line}", file=stream, flush=True)


def note(message: str, stream=None) -> None:
    """Print the one-line note `mpimem: note: <message>` (something worth knowing that is not an
    error: the command goes on)."""
    stream = stream or sys.stderr
    line = " ".join(str(message).split("\n"))
    print(f"mpimem: note: {line}", file=stream, flush=True)


def plain(value):
    """`value` as a plain Python object for a message: a numpy scalar becomes its Python number
    (so that an error says 9, not np.int64(9)), bytes their text; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def expected_ranks():
    """MPIMEM_EXPECT_RANKS as an int >= 1, or None when unset or empty; MpimemError (one line)
    for anything else."""
    text = os.environ.get("MPIMEM_EXPECT_RANKS", "").strip()
    if not text:
        return None
    try:
        ranks = int(text)
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise MpimemError(f"MPIMEM_EXPECT_RANKS must be a whole number of MPI ranks >= 1, got "
                          f"'{os.environ['MPIMEM_EXPECT_RANKS']}'")
    return ranks


def launcher_rank() -> int:
    """This process's rank as the MPI launcher told it (0 when not launched by one).

    Read from the environment so that errors found before MPI starts (bad options) are
    reported by rank 0 alone; MPICH/Hydra, PMIx, Open MPI, MVAPICH and SLURM's srun are known.
    """
    for var in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    if "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


# ---------------------------------------------------------------------- one rank ends the job
_AT_ABORT = []


def at_abort(hook) -> None:
    """Run hook(message) on this rank before it aborts the world (best effort: a failing hook
    does not prevent the abort), the last registered first, as atexit does: rank 0 registers
    the release of its run lock, then the marking of its run file as failed, so the run file
    is marked before another job can take the lock."""
    _AT_ABORT.append(hook)


def mpi_world():
    """COMM_WORLD if this process is a rank of a running MPI world of size > 1, else None
    (mpi4py not imported yet, MPI finalised, or a world of one)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi.COMM_WORLD if mpi.COMM_WORLD.Get_size() > 1 else None


ABORT_GRACE = 0.5   # seconds between the error line and MPI_Abort (abort_world)


def abort_world(comm, message: str, status: int) -> None:
    """One line from this rank, the at_abort hooks, then MPI Abort: every rank ends (status).
    MPICH's MPI_Abort returns to the caller (the launcher kills the job a moment later), so
    this rank then leaves at once with os._exit: no traceback, no atexit MPI_Finalize. Before
    the abort it waits ABORT_GRACE seconds, so that the launcher forwards the line: Hydra kills
    every process on MPI_Abort and drops output still in the pipes (seen under load)."""
    report(message)
    for hook in reversed(_AT_ABORT):
        try:
            hook(message)
        except Exception:  # the abort below matters more than the hook
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)
    comm.Abort(status)
    os._exit(status)


# ---------------------------------------------------------------------- test hook
_REACHED = {}


def fault_point(place: str, rank: int) -> None:
    """The MPIMEM_FAULT hook at PLACE on this rank (see the module docstring); a no-op unless
    MPIMEM_FAULT names PLACE."""
    parts = os.environ.get("MPIMEM_FAULT", "").split(":")
    if len(parts) < 3 or parts[1] != place or parts[0] not in ("raise-at", "sleep-at"):
        return
    _REACHED[place] = _REACHED.get(place, 0) + 1
    if parts[0] == "sleep-at":
        if _REACHED[place] == 1:
            time.sleep(float(parts[2]))
    elif int(parts[2]) == rank and _REACHED[place] == (int(parts[3]) if len(parts) > 3 else 1):
        raise RuntimeError(f"injected fault at {place} (MPIMEM_FAULT)")


def slow_worker_delay(rank: int) -> float:
    """The MPIMEM_SLOW_WORKER=RANK:SECONDS test hook: seconds rank RANK sleeps before each
    exchange (allgather) or send (async); 0 for every other rank or when unset."""
    spec = os.environ.get("MPIMEM_SLOW_WORKER", "")
    if ":" in spec:
        who, seconds = spec.split(":", 1)
        if int(who) == rank:
            return float(seconds)
    return 0.0
