"""The study planner of the job scripts: a study TOML plus the environment -> the runs to do.

    python -m mpimem.cli.studyplan count STUDY.toml        number of runs
    python -m mpimem.cli.studyplan list STUDY.toml         index data-set label W seed, one run a line
    python -m mpimem.cli.studyplan run STUDY.toml INDEX    run INDEX as shell assignments for bash

A study (jobs/studies/*.toml, layout in jobs/README.md) expands to the runs
    datasets x methods x workers x seeds        (a method may name the data sets it applies to)
in that order (seeds vary fastest). Settings: [train] < the method's table < environment
(EPOCHS, EVAL_EVERY, BATCH_SIZE, MODE, TOPOLOGY, GROUP_SIZE, EXTRA_ARGS, CHECKPOINT_EVERY); the
environment's DATASETS, METHODS, WORKERS, SEEDS select subsets and N, D, N_<NAME>, D_<NAME>,
N_PER_WORKER, DATA_SEED size the synthetic data.

A run's MPI world: W + 1 ranks for the parameter server (topology "server", the default: rank 0
the server), W ranks for the serverless topologies (allgather, sparse-allreduce, hierarchical);
`run` hands the job script RUN_RANKS and RUN_TOPOLOGY, and meta.json records both.

A study runs what it says or fails: every run's `mpimem train` arguments are parsed by mpimem's
own train parser and checked by its validator (mpimem.run.config.check_settings) before any run
starts, and so is every environment setting (WORKERS, N, D, N_PER_WORKER >= 1, SEEDS,
EPOCHS, EVAL_EVERY, BATCH_SIZE, CHECKPOINT_EVERY, MODE, TOPOLOGY). An unknown option, a mode or
compressor this mpimem does not have, a value of the wrong type or out of range, an unknown
label or data set is an error (one line naming the variable or run, exit status 2), never a
silent fallback. (Checks that need the data, such as k <= d, are made by `mpimem train` itself
when the run starts.)
"""
import argparse
import json
import os
import shlex
import sys
import tomllib
from dataclasses import asdict, dataclass

from mpimem.run.config import check_settings, has_server
from mpimem.cli.options import merge, toml_table, toml_value
from mpimem.errors import MpimemError, report

# keys of a method table that are not train options; `defaults` lists [train] settings the
# method leaves to mpimem's defaults (e.g. EF21's own steps: schedule, gamma, shift)
NOT_OPTIONS = ("label", "datasets", "defaults")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: where its data comes from and the `mpimem train` options after DATA."""

    index: int
    dataset: str
    label: str
    workers: int
    seed: int
    data: str                  # the data file (generated first when `synthetic`)
    synthetic: bool
    like: str                  # `mpimem data synth --like`
    n: int                     # synthetic size (None for a staged or explicit file)
    d: int
    data_seed: int
    n_per_worker: int
    mode: str                  # the mode that runs (as parsed from args), never a fallback
    topology: str              # the topology that runs (as parsed from args)
    ranks: int                 # MPI ranks of the run: W + 1 with a server, else W
    args: tuple
    checkpoint_args: tuple     # --checkpoint-every (CHECKPOINT_EVERY): every mode and topology
                               # checkpoints; also passed with --resume


def load_study(path: str) -> dict:
    """The study TOML as a dict; MpimemError (one line) when missing or malformed."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise MpimemError("no such study file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MpimemError(f"cannot read the study file: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise MpimemError(f"not valid TOML: {err}") from None


def env_list(env: dict, key: str, default, integers=False, minimum=None) -> list:
    """The space- or comma-separated list in env[key] (of integers >= minimum if asked; the
    study's own list is checked the same way), else `default`."""
    words = env.get(key, "").replace(",", " ").split()
    if not words:
        words, what = list(default), f"the study's {key.lower()} entry"
    else:
        what = f"{key} entry"
    return [_integer(w, what, minimum) for w in words] if integers else words


def _integer(value, what: str, minimum=None) -> int:
    """An integer setting of the study or the environment (>= minimum when given); MpimemError
    naming it otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise MpimemError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise MpimemError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


def select_methods(methods: list, labels: list) -> list:
    """The method tables named by `labels` (all when empty); unknown labels are an error."""
    if not all(isinstance(m, dict) and "label" in m for m in methods):
        raise MpimemError("every [[methods]] table needs a label")
    if not labels:
        return methods
    known = [m["label"] for m in methods]
    bad = [lab for lab in labels if lab not in known]
    if bad:
        raise MpimemError(f"METHODS names unknown label(s) {', '.join(bad)}; "
                          f"the study has {', '.join(known)}")
    return [m for m in methods if m["label"] in labels]


def data_source(ds: str, dcfg: dict, workers: int, env: dict) -> dict:
    """Where run data comes from, in order: DATA_<NAME> or the TOML's `path`; else the staged
    $DATA_DIR/<name>.h5 when no size override is set; else the synthetic look-alike
    $DATA_DIR/synth-<like>-n<N>-d<D>-s<DATA_SEED>.h5 (N = n_per_worker * W for weak scaling)."""
    up = ds.upper().replace("-", "_")

    def pick(key):
        return env.get(f"{key}_{up}") or env.get(key) or dcfg.get(key.lower())

    data_dir = env.get("DATA_DIR", "data")
    data_seed = _integer(env.get("DATA_SEED", "1"), "DATA_SEED", 0)
    npw = pick("N_PER_WORKER")
    explicit = env.get(f"DATA_{up}") or dcfg.get("path")
    sized = any(env.get(k) for k in ("N", "D", f"N_{up}", f"D_{up}"))
    staged = os.path.join(data_dir, f"{ds}.h5")
    npw = _integer(npw, f"N_PER_WORKER of {ds}", 1) if npw else None
    out = dict(synthetic=False, like=dcfg.get("like", ds), n=None, d=None, data_seed=data_seed,
               n_per_worker=npw)
    if explicit and not npw:
        return dict(out, data=explicit)
    if not npw and not sized and os.path.exists(staged):
        return dict(out, data=staged)
    n_one, d = (npw, pick("D")) if npw else (pick("N"), pick("D"))
    if n_one is None or d is None:
        raise MpimemError(f"data set {ds}: no file {staged} and no size for a synthetic "
                          f"look-alike (set n and d in the study, or N and D)")
    n = _integer(n_one, f"N of {ds}", 1) * (workers if npw else 1)
    d = _integer(d, f"D of {ds}", 1)
    name = f"synth-{out['like']}-n{n}-d{d}-s{data_seed}.h5"
    return dict(out, data=os.path.join(data_dir, name), synthetic=True, n=n, d=d)


def train_options(cfg: dict, method: dict, dcfg: dict, seed: int, env: dict) -> dict:
    """The `mpimem train` settings of one run: [train] < method < environment (text, checked
    with the rest by the train parser)."""
    study = cfg.get("study", {})
    opts = dict(cfg.get("train", {}))
    opts.update({k: v for k, v in method.items() if k not in NOT_OPTIONS})
    for key in method.get("defaults", []):
        opts.pop(key, None)
    opts["epochs"] = env.get("EPOCHS") or dcfg.get("epochs", 1)
    if env.get("EVAL_EVERY") or "eval_every" in study:
        opts["eval_every"] = env.get("EVAL_EVERY") or study["eval_every"]
    if env.get("BATCH_SIZE"):
        opts["batch_size"] = env["BATCH_SIZE"]
    opts["mode"] = env.get("MODE") or opts.get("mode") or study.get("mode", "sync")
    # TOPOLOGY (else the method's / [train]'s / [study]'s; absent: mpimem's default, server) and
    # GROUP_SIZE (hierarchical only; check_system) pass through to the train parser
    topology = env.get("TOPOLOGY") or opts.get("topology") or study.get("topology")
    if topology:
        opts["topology"] = topology
    if env.get("GROUP_SIZE"):
        opts["group_size"] = _integer(env["GROUP_SIZE"], "GROUP_SIZE")
    opts["seed"] = seed
    return opts


def to_args(opts: dict) -> list:
    """Settings as command-line options: key_name = v -> --key-name v; a bool is the flag
    (--memory) or its negation (--no-memory)."""
    args = []
    for key, value in opts.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    return args


class _Refuse(argparse.ArgumentParser):
    """argparse that raises MpimemError instead of printing usage and exiting."""

    def error(self, message):
        raise MpimemError(message)


def check_train_args(data: str, args: list):
    """`mpimem train DATA ARGS` parsed by mpimem's own parser, so that an option, mode or
    operator this mpimem lacks is refused; returns the TrainConfig it would start from."""
    from mpimem.cli import train as train_cli

    parser = _Refuse(prog="mpimem", add_help=False)
    train_cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["train", data, *args])
    return merge({k: v for k, v in vars(ns).items() if k not in ("func", "command", "config")})


# environment variables that become `mpimem train` options of every run: each is checked on its
# own first, so that a bad value is refused naming the variable (GROUP_SIZE: check_system)
ENV_OPTIONS = {"EPOCHS": "epochs", "EVAL_EVERY": "eval_every", "BATCH_SIZE": "batch_size",
               "CHECKPOINT_EVERY": "checkpoint_every", "MODE": "mode", "TOPOLOGY": "topology"}


def check_environment(env: dict) -> None:
    """Every ENV_OPTIONS variable that is set, parsed by mpimem's train parser and checked by
    mpimem.run.config.check_settings (what `mpimem train` refuses at start, without the data):
    MpimemError 'VAR=value: problem' before any run starts."""
    for var, key in ENV_OPTIONS.items():
        value = env.get(var)
        if not value:
            continue
        try:
            check_settings(check_train_args("DATA.h5", to_args({key: value})))
        except MpimemError as err:
            raise MpimemError(f"{var}={value}: {err}") from None


def plan(cfg: dict, env: dict) -> list:
    """Every run of the study `cfg` (a loaded TOML) under the environment `env`, checked."""
    study = cfg.get("study", {})
    datasets = env_list(env, "DATASETS", study.get("datasets", []))
    check_environment(env)
    workers = env_list(env, "WORKERS", study.get("workers", [1]), integers=True, minimum=1)
    seeds = env_list(env, "SEEDS", study.get("seeds", [0]), integers=True)
    methods = select_methods(cfg.get("methods", []), env_list(env, "METHODS", []))
    try:
        extra = shlex.split(env.get("EXTRA_ARGS", ""))
    except ValueError as err:
        raise MpimemError(f"EXTRA_ARGS: {err}") from None
    runs = []
    for ds in datasets:
        dcfg = cfg.get("datasets", {}).get(ds)
        if dcfg is None:
            raise MpimemError(f"data set {ds!r} is not described ([datasets.{ds}])")
        for method in methods:
            if "datasets" in method and ds not in method["datasets"]:
                continue
            for w in workers:
                for s in seeds:
                    runs.append(_planned(len(runs), cfg, ds, dcfg, method, w, s, env, extra))
    return runs


def ranks_of(topology: str, workers: int) -> int:
    """MPI ranks of a run of W workers: W + 1 with the parameter server (rank 0), W without."""
    return workers + 1 if has_server(topology) else workers


def check_system(tc, workers: int) -> None:
    """What the train parser lets through but no run can do, refused before any run starts
    (mpimem train itself refuses the same at start-up, after the job got its allocation)."""
    if tc.mode == "async" and not has_server(tc.topology):
        raise MpimemError(f"--mode async needs --topology server, got --topology {tc.topology} "
                          f"(with TOPOLOGY={tc.topology} set MODE=sync)")
    group = tc.group_size
    if group is not None and tc.topology != "hierarchical":
        raise MpimemError(f"--group-size (GROUP_SIZE) needs --topology hierarchical, got "
                          f"--topology {tc.topology}")
    if group is not None and not 1 <= group <= workers:
        raise MpimemError(f"--group-size must satisfy 1 <= G <= W = {workers}, got {group} "
                          f"(choose WORKERS of at least GROUP_SIZE)")


def _planned(index, cfg, ds, dcfg, method, workers, seed, env, extra) -> PlannedRun:
    """Run `index`: its data, its options (EXTRA_ARGS last, so they win), checked by the parser."""
    src = data_source(ds, dcfg, workers, env)
    ckpt = ()
    if env.get("CHECKPOINT_EVERY"):
        ckpt = ("--checkpoint-every", env["CHECKPOINT_EVERY"])
    try:
        args = to_args(train_options(cfg, method, dcfg, seed, env)) + extra
        tc = check_train_args(src["data"], args + list(ckpt))
        check_settings(tc)
        check_system(tc, workers)
    except MpimemError as err:
        raise MpimemError(f"run {index} ({ds} {method['label']} W={workers}): {err}") from None
    return PlannedRun(index=index, dataset=ds, label=method["label"], workers=workers, seed=seed,
                      mode=tc.mode, topology=tc.topology, ranks=ranks_of(tc.topology, workers),
                      args=tuple(args), checkpoint_args=ckpt, **src)


def shell_lines(run: PlannedRun, study: str) -> list:
    """The run as bash assignments for `eval` (RUN_* variables, RUN_ARGS and RUN_CKPT arrays,
    RUN_META the JSON that jobs/common.sh completes into meta.json)."""
    q = shlex.quote
    meta = dict(asdict(run), study=study, train_args=list(run.args))
    del meta["args"], meta["checkpoint_args"]
    return [f"RUN_LABEL={q(run.label)}; RUN_DATASET={q(run.dataset)}; "
            f"RUN_WORKERS={run.workers}; RUN_SEED={run.seed}; "
            f"RUN_TOPOLOGY={q(run.topology)}; RUN_RANKS={run.ranks}",
            f"RUN_DATA={q(run.data)}; RUN_SYNTH={int(run.synthetic)}; RUN_LIKE={q(run.like)}; "
            f"RUN_DATA_SEED={run.data_seed}; RUN_N={run.n or ''}; RUN_D={run.d or ''}",
            "RUN_ARGS=(" + " ".join(q(a) for a in run.args) + ")",
            "RUN_CKPT=(" + " ".join(q(a) for a in run.checkpoint_args) + ")",
            f"RUN_META={q(json.dumps(meta))}"]


def main(argv=None, env=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpimem.cli.studyplan",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("count", "list", "run"))
    ap.add_argument("study", metavar="STUDY.toml")
    ap.add_argument("index", nargs="?", type=int, help="run: the run's index")
    a = ap.parse_args(argv)
    env = os.environ if env is None else env
    try:
        cfg = load_study(a.study)
        name = env.get("STUDY") or cfg.get("study", {}).get("name", "?")
        runs = plan(cfg, env)
        if a.command == "count":
            lines = [str(len(runs))]
        elif a.command == "list":
            lines = [f"{r.index} {r.dataset} {r.label} {r.workers} {r.seed}" for r in runs]
        else:
            if a.index is None or not 0 <= a.index < len(runs):
                raise MpimemError(f"run index {a.index} not in 0..{len(runs) - 1}")
            lines = shell_lines(runs[a.index], name)
    except MpimemError as err:
        report(f"study {a.study}: {err}")
        return 2
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:   # `... list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())


def study_examples(path: str) -> dict:
    """{file name: TOML text}: one example config per method of the study file `path`, named
    STUDY-LABEL.toml, holding the settings of that method's runs on its first data set as
    mpimem.cli.studyplan makes them ([train] < method < the data set's epochs, the study's
    eval_every and mode; seed 0) and data = the staged data/NAME.h5. docs/configs/ holds them."""
    study = load_study(path)
    name, workers = study["study"]["name"], study["study"].get("workers", [1])
    examples = {}
    for method in study["methods"]:
        ds = method.get("datasets", study["study"]["datasets"])[0]
        opts = train_options(study, method, study["datasets"][ds], 0, {})
        settings = {"data": f"data/{ds}.h5"}
        settings.update((key, toml_value(path, key, value)) for key, value in opts.items())
        file = f"{name}-{method['label']}.toml"
        examples[file] = toml_table(settings, [
            f"Study '{name}', method '{method['label']}' on {ds} (jobs/studies/{name}.toml),",
            "written by mpimem.cli.studyplan.study_examples. Run with W workers (the study's W: "
            f"{', '.join(map(str, workers))}):",
            f"  mpiexec -n W+1 mpimem train --config docs/configs/{file} [DATA.h5] [OPTIONS]",
            "options given on the command line override these settings."])
    return examples
