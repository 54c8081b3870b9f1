"""`mpimem info RUN.h5`: a summary of a run file (settings, status, final losses, traffic)."""

from .runfile import read_run


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a run file (RUN.h5)")
    p.add_argument("run", help="run file written by mpimem train")
    p.set_defaults(func=show)


def show(args) -> int:
    run = read_run(args.run)
    a, m, cfg = run["attrs"], run["metrics"], run["attrs"]["config"]
    print(f"{args.run}: status {a['status']}, mpimem {a.get('mpimem_version', '?')}, "
          f"{a.get('workers', '?')} workers on {a.get('hosts', '?')}")
    print(f"  data {a.get('dataset', '?')} (n={a.get('n')}, d={a.get('d')}), lambda {a.get('lam'):.3g}, "
          f"f* {a.get('fstar'):.10g}")
    print(f"  {cfg.get('compressor')} k={cfg.get('k')} memory={cfg.get('memory')} "
          f"b={cfg.get('batch_size')} schedule={cfg.get('schedule')} gamma={cfg.get('gamma')} "
          f"a={cfg.get('shift')} averaging={cfg.get('averaging')} l2={cfg.get('l2')} seed={cfg.get('seed')}")
    if m.get("round") is not None and len(m["round"]):
        last = {k: v[-1] for k, v in m.items()}
        print(f"  {len(m['round'])} evaluation points; last: epoch {last['epoch']:.3f}, "
              f"f(xbar) {last['loss_xbar']:.8g}, f(xbar)-f* {last['subopt_xbar']:.3e}, "
              f"f(x)-f* {last['subopt_x']:.3e}, accuracy {last['acc_xbar']:.4f}")
        print(f"  traffic: {last['bytes_up'] / 1e6:.3f} MB up, {last['bytes_down'] / 1e6:.3f} MB down, "
              f"{last['bytes_up'] / max(1.0, last['samples']):.2f} bytes up per sample; "
              f"wall {last['wall_time']:.2f} s")
    if run["timing"] is not None:
        cols, secs = run["timing"]["columns"], run["timing"]["seconds"]
        print("  seconds per rank: " + "  ".join(f"{c:>13s}" for c in cols))
        for rank, row in enumerate(secs):
            who = "server" if rank == 0 else f"worker {rank}"
            print(f"  {who:>16s}: " + "  ".join(f"{v:13.3f}" for v in row))
    if a.get("error"):
        print(f"  error: {a['error']}")
    return 0
