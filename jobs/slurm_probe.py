"""Tiny MPI launch probe: did the launcher build ONE world of the expected size?

    mpiexec -n 3 python jobs/slurm_probe.py --expect 3
    srun --mpi=pmi2 -n 3 python jobs/slurm_probe.py --expect 3

Rank 0 gathers every rank's view and prints one line per rank (one write, so lines from
several ranks cannot interleave):

    probe rank=R size=S host=H slurm_procid=P

With --expect N every process checks COMM_WORLD.size == N and exits 2 with a message on
stderr otherwise. That catches the classic trap: plain `srun -n N` (no --mpi=pmi2) starts
N separate size-1 programs that all "succeed".
"""
import argparse
import os
import socket
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expect", type=int, default=None, metavar="N",
                    help="exit 2 unless COMM_WORLD.size == N")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = (rank, size, socket.gethostname(), os.environ.get("SLURM_PROCID", "-"))
    views = comm.gather(mine, root=0)
    if rank == 0:
        sys.stdout.write("".join(f"probe rank={r} size={s} host={h} slurm_procid={p}\n"
                                 for r, s, h, p in views))
        sys.stdout.flush()
    if args.expect is not None and size != args.expect:
        sys.stderr.write(
            f"slurm_probe: COMM_WORLD.size is {size}, expected {args.expect} "
            f"(SLURM_PROCID={mine[3]}): the launcher did not connect the processes into one "
            f"MPI world; under srun use --mpi=pmi2 (MPICH) or launch with mpiexec\n")
        sys.stderr.flush()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
