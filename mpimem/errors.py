"""One error type for every problem a user can fix, and the one-line report of it."""
import sys


class MpimemError(Exception):
    """A problem with the user's input or environment: reported as one line, exit status 2.

    The message names the thing at fault (file, line number, option) and what is wrong with it.
    """

    exit_status = 2


def report(message: str, stream=None) -> None:
    """Print the one-line error report `mpimem: error: <message>`."""
    stream = stream or sys.stderr
    line = " ".join(str(message).split("\n"))
    print(f"mpimem: error: {line}", file=stream, flush=True)


def launcher_rank() -> int:
    """This process's rank as the MPI launcher told it (0 when not launched by one).

    Read from the environment so that errors found before MPI starts (bad options) are
    reported by rank 0 alone; MPICH/Hydra, PMIx, Open MPI, MVAPICH and SLURM's srun are known.
    """
    import os

    for var in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    if "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0
