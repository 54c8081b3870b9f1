"""`mpimem train DATA.h5 ...`: the options of Mem-SGD training (run under mpiexec -n W+1), and
`--dump-config`, which prints the resolved configuration as TOML (one process is enough)."""
import argparse

from mpimem import __version__
from mpimem.core.operators import COMPRESSORS
from mpimem.run.config import ASYNC_STEPS, L2_PLACEMENTS, METHODS, MODES, TOPOLOGIES, has_server, resolve
from mpimem.cli.options import dump_toml, load_toml, merge
from mpimem.errors import MpimemError, expected_ranks
from mpimem.core.schedule import AVERAGINGS, SCHEDULES


def register(sub) -> None:
    p = sub.add_parser("train", help="train with Mem-SGD under MPI (rank 0 server, 1..W workers)",
                       description="Train L2-regularised logistic regression with compressed, "
                                   "error-feedback SGD. Launch: mpiexec -n W+1 mpimem train DATA.h5")
    p.add_argument("data", nargs="?", help="mpimem data set (HDF5, see `mpimem data`); "
                   "optional with --resume or with `data = ...` in the --config file")
    p.add_argument("--out", help="run file to write (default RUN.h5)")
    p.add_argument("--config", help="TOML file with settings; options given here override it")
    g = p.add_argument_group("compression")
    g.add_argument("--compressor", choices=COMPRESSORS, help="operator (default top_k)")
    g.add_argument("--k", type=int, help="coordinates kept by top_k/rand_k (default 1)")
    g.add_argument("--k-fraction", type=float, help="k as a fraction of d")
    g.add_argument("--bits", type=int, help="qsgd: bits per entry on the wire, sign included (default 4)")
    g.add_argument("--levels", type=int, help="qsgd: number of levels s (instead of --bits)")
    g.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="error feedback (default on; --no-memory for the memory-less baselines)")
    g.add_argument("--method", choices=METHODS, help="memsgd (Algorithm 1, error memory; "
                   "default) or ef21 (EF21; EF21-BC with --downlink-k): docs/spec.md")
    g.add_argument("--k-warmup", type=int, metavar="EPOCHS", help="top_k/rand_k: grow the "
                   "sparsity from dense to k geometrically over the first EPOCHS epochs "
                   "(DGC's warm-up; default 0: off)")
    g = p.add_argument_group("budget and steps")
    g.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    g.add_argument("--samples", type=int, help="sample budget instead of --epochs")
    g.add_argument("--batch-size", type=int, help="local mini-batch b per worker and round (default 1)")
    g.add_argument("--schedule", choices=SCHEDULES, help="decay gamma/(lam(t+a)), bottou "
                   "gamma/(1+gamma lam t), constant gamma (default per operator: bottou for "
                   "rand_k and for qsgd/ternary without memory, decay otherwise; bottou under "
                   "--mode async)")
    g.add_argument("--gamma", type=float, help="step-size constant (default per operator: 2 with "
                   "decay, 1 with bottou, 0.1 for ternary without memory)")
    g.add_argument("--shift", help="shift a of the decay schedule and weights: a number of "
                   "samples or 'd/k', '5d/k' rounds (default 1/delta rounds: d/k for top_k/rand_k, "
                   "1+beta for qsgd/ternary, 1+sqrt(d) for sign, 1 for none)")
    g.add_argument("--averaging", choices=AVERAGINGS, help="weights of xbar: quadratic (a+t)^2 (default), uniform, none")
    g.add_argument("--lam", type=float, help="L2 regularisation lambda (default 1/n)")
    g.add_argument("--l2", choices=L2_PLACEMENTS, help="where the L2 term acts: worker "
                   "(default; the paper's Algorithm 1: lam x goes through the compressor and the "
                   "memory, O(d) per round) or server (the fast path: the L2 shrink applied "
                   "exactly on the iterate, per-round cost grows with nnz and k, not d)")
    g = p.add_argument_group("system")
    g.add_argument("--mode", choices=MODES, help="sync (default) or async: the server applies "
                   "each worker's message as it arrives (docs/scaling.md)")
    g.add_argument("--topology", choices=TOPOLOGIES, help="server (default; mpiexec -n W+1), or "
                   "with every rank a worker (mpiexec -n W): allgather, sparse-allreduce "
                   "(recursive doubling of sparse sums), hierarchical (groups per node, "
                   "leaders allreduce): docs/scaling.md")
    g.add_argument("--group-size", type=int, metavar="G", help="hierarchical: G consecutive "
                   "ranks per group instead of one group per node")
    g.add_argument("--async-step", choices=ASYNC_STEPS, help="async: the server applies each "
                   "worker's full step u_w (full, Hogwild; default) or u_w/W (mean)")
    g.add_argument("--downlink-k", type=int, help="sync server: send only the top-K of the "
                   "aggregate and keep the rest in a server memory (default: the exact update)")
    g.add_argument("--seed", type=int, help="seed of every random stream (default 0)")
    g.add_argument("--eval-every", type=float, help="epochs between evaluations (default: 10 points a run)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress lines")
    g.add_argument("--dump-config", action="store_true", default=None,
                   help="print the configuration resolved against the data set as TOML (a "
                        "--config file) and exit without training; needs no mpiexec (checked "
                        "for the world's W under mpiexec, else MPIMEM_EXPECT_RANKS ranks, else W=1)")
    g = p.add_argument_group("checkpoints (docs/checkpoints.md)")
    g.add_argument("--checkpoint-every", metavar="N|Ts",
                   help="checkpoint every N rounds or every T seconds ('500', '30s', '5m'; "
                        "'off' for none, not even the final one; default 60s); with an interval a final "
                        "checkpoint is always written")
    g.add_argument("--keep-checkpoints", type=int, metavar="K", help="checkpoints kept (default 2)")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run file and discard the checkpoints of its run "
                        "in RUN.ckpt/ (without it an existing --out is refused)")
    g.add_argument("--resume", metavar="RUN.h5|CKPT.h5",
                   help="continue an interrupted run from its newest valid checkpoint "
                        "(settings come from the checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mpimem.run.driver import train

    cli = {k: v for k, v in vars(args).items()
           if k not in ("func", "command", "config", "dump_config")}
    cfg = merge(cli, args.config)
    if not cfg.data and not cfg.resume:
        raise MpimemError("train: the data set is required (or --resume RUN.h5)")
    if args.dump_config:
        return dump_config(cfg)
    explicit = {k for k, v in cli.items() if v is not None}   # what --resume must honour
    if args.config:
        explicit |= set(load_toml(args.config))
    return train(cfg, explicit=explicit)


def dump_workers(comm, topology: str) -> int:
    """The W that --dump-config checks the settings for (W enters only the checks, never a
    resolved value): the world's workers under mpiexec; in a single process, the workers of
    MPIMEM_EXPECT_RANKS ranks when it is set, else 1."""
    from mpimem.run.driver import check_world_size

    ranks = comm.Get_size()
    if ranks > 1:
        check_world_size(comm)
    elif expected_ranks() is not None:
        ranks = expected_ranks()
    else:
        return 1
    return ranks - (1 if has_server(topology) else 0)


def dump_config(cfg) -> int:
    """--dump-config: resolve `cfg` against the data set (mpimem.run.config.resolve) and print it
    as TOML on rank 0's stdout (mpimem.cli.options.dump_toml), a file `--config` takes back to the
    same run; every rank exits 0 without training, or 2 with one line on a bad setting."""
    from mpi4py import MPI

    from mpimem.data.dataset import read_meta
    from mpimem.run.driver import agree

    comm = MPI.COMM_WORLD

    def resolved():
        if cfg.resume:
            raise MpimemError("--dump-config prints a new run's settings; it does not take "
                              "--resume")
        workers = dump_workers(comm, cfg.topology)
        meta = read_meta(cfg.data)
        notes = [f"mpimem train configuration (mpimem {__version__}), resolved for n={meta.n} "
                 f"d={meta.d} and W={workers} workers; use it with --config FILE"]
        out = resolve(cfg, meta.n, meta.d, workers)
        return dump_toml(out, notes + [f"note: {note}" for note in out.extra.get("notes", [])])

    text = agree(comm, resolved)
    if comm.Get_rank() == 0:
        print(text, end="", flush=True)
    return 0
