"""How mpimem's benchmarks and cost model launch `mpiexec`: a core per rank.

MPI ranks busy-poll, and the compiled loops exchange a message every few microseconds, so a
rank must own its core. Binding it at launch matters even when there are enough cores: here
(2 cores, MPICH's Hydra), RCV1-like top-1 at b = 1 took 31-33 us a sample with `mpiexec -n 2`
and 7.0 with `mpiexec -bind-to core -n 2`, the same run (pinning from inside the process after
start-up did not help: 32.6). On a cluster use the launcher's binding (`srun --cpu-bind=cores`,
Open MPI's `--bind-to core`).
"""
import os
import sys


def mpiexec_command(ranks: int) -> list:
    """`mpiexec [-bind-to core] -n RANKS`: the launcher beside this interpreter (the venv's,
    from the MPICH wheel), else the one on PATH."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [mpiexec if os.path.exists(mpiexec) else "mpiexec", *core_binding(ranks), "-n",
            str(ranks)]


def core_binding(ranks: int) -> list:
    """Hydra's `-bind-to core` when every rank can have a core of this machine, else nothing
    (binding more ranks than cores would stack them on the same cores)."""
    return ["-bind-to", "core"] if ranks <= (os.cpu_count() or 1) else []
