"""`mpimem info RUN.h5`: a summary of a run file (settings, status, final losses, traffic).

Works on a run in progress (the run file on disk is always complete, mpimem.runfile) and on
any damaged file: a file that is not a readable run file (damaged config, no status, ...) is
one line `mpimem: error: ...`, exit 2; an attribute that is missing or of the wrong type is
shown as '?'.
"""

from .runfile import read_run


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a run file (RUN.h5)")
    p.add_argument("run", help="run file written by mpimem train")
    p.set_defaults(func=show)


def fmt(value, spec: str = "") -> str:
    """`value` formatted with `spec`, or '?' when it is missing or does not fit the spec."""
    if value is None:
        return "?"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return "?"


def show(args) -> int:
    run = read_run(args.run)
    a, m, cfg = run["attrs"], run["metrics"], run["attrs"]["config"]
    print(f"{args.run}: status {a['status']}, mpimem {fmt(a.get('mpimem_version'))}, "
          f"{fmt(a.get('workers'))} workers on {fmt(a.get('hosts'))}")
    print(f"  data {fmt(a.get('dataset'))} (n={fmt(a.get('n'))}, d={fmt(a.get('d'))}), "
          f"lambda {fmt(a.get('lam'), '.3g')}, f* {fmt(a.get('fstar'), '.10g')}")
    print(f"  {fmt(cfg.get('compressor'))} k={fmt(cfg.get('k'))} memory={fmt(cfg.get('memory'))} "
          f"b={fmt(cfg.get('batch_size'))} schedule={fmt(cfg.get('schedule'))} "
          f"gamma={fmt(cfg.get('gamma'))} a={fmt(cfg.get('shift'))} "
          f"averaging={fmt(cfg.get('averaging'))} l2={fmt(cfg.get('l2'))} seed={fmt(cfg.get('seed'))}")
    rows = min((len(v) for v in m.values()), default=0)
    if rows:
        last = {k: v[rows - 1] for k, v in m.items()}
        print(f"  {rows} evaluation points; last: epoch {fmt(last.get('epoch'), '.3f')}, "
              f"f(xbar) {fmt(last.get('loss_xbar'), '.8g')}, "
              f"f(xbar)-f* {fmt(last.get('subopt_xbar'), '.3e')}, "
              f"f(x)-f* {fmt(last.get('subopt_x'), '.3e')}, "
              f"accuracy {fmt(last.get('acc_xbar'), '.4f')}")
        up, down, samples = (last.get(k) for k in ("bytes_up", "bytes_down", "samples"))
        if None not in (up, down, samples):
            print(f"  traffic: {up / 1e6:.3f} MB up, {down / 1e6:.3f} MB down, "
                  f"{up / max(1.0, samples):.2f} bytes up per sample; "
                  f"wall {fmt(last.get('wall_time'), '.2f')} s")
    if run["timing"] is not None:
        cols, secs = run["timing"]["columns"], run["timing"]["seconds"]
        print("  seconds per rank: " + "  ".join(f"{c:>13s}" for c in cols))
        for rank, row in enumerate(secs):
            who = "server" if rank == 0 else f"worker {rank}"
            print(f"  {who:>16s}: " + "  ".join(f"{v:13.3f}" for v in row))
    if a.get("error"):
        print(f"  error: {a['error']}")
    return 0
