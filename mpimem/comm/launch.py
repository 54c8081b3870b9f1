"""How mpimem's benchmarks and cost model launch `mpiexec`: a core per rank.

MPI ranks busy-poll, and the compiled loops exchange a message every few microseconds, so a
rank must own its core. Binding it at launch matters even when there are enough cores: here
(2 cores, MPICH's Hydra), RCV1-like top-1 at b = 1 took 31-33 us a sample with `mpiexec -n 2`
and 7.0 with `mpiexec -bind-to core -n 2`, the same run (pinning from inside the process after
start-up did not help: 32.6). On a cluster use the launcher's binding (`srun --cpu-bind=cores`,
Open MPI's `--bind-to core`). The launcher's flavour (Hydra: MPICH, Intel MPI; or Open MPI) is
read from `mpiexec --version` once.
"""
import functools
import os
import subprocess
import sys


def launcher() -> str:
    """The mpiexec beside this interpreter (the venv's, from the MPI wheel), else the one on PATH."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return mpiexec if os.path.exists(mpiexec) else "mpiexec"


@functools.lru_cache(maxsize=None)
def flavour(mpiexec: str = None) -> str:
    """"openmpi" or "hydra" (MPICH, Intel MPI, and what else does not say Open MPI)."""
    try:
        out = subprocess.run([mpiexec or launcher(), "--version"], capture_output=True,
                             text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return "hydra"
    return "openmpi" if ("Open MPI" in text or "OpenRTE" in text or "PRRTE" in text) else "hydra"


def mpiexec_command(ranks: int) -> list:
    """`mpiexec [core binding] -n RANKS` with this interpreter's launcher."""
    mpiexec = launcher()
    return [mpiexec, *core_binding(ranks, flavour(mpiexec)), "-n", str(ranks)]


def core_binding(ranks: int, kind: str = None) -> list:
    """`-bind-to core` (Hydra) or `--bind-to core` (Open MPI) when every rank can have a core of
    this machine, else nothing (binding more ranks than cores would stack them on the same
    cores; Open MPI then also needs --oversubscribe to start them)."""
    kind = kind or flavour()
    if ranks <= (os.cpu_count() or 1):
        return ["--bind-to", "core"] if kind == "openmpi" else ["-bind-to", "core"]
    return ["--oversubscribe"] if kind == "openmpi" else []
