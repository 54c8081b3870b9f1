"""mpimem.cli.studyplan, the planner of jobs/*.sbatch, in-process: expansion, environment overrides,
data naming, the `mpimem train` arguments of each run, and refusals (never a silent fallback).
The last tests run it as the job scripts do (`python -m`, `bash jobs/common.sh`)."""
import itertools
import re
import sys

import pytest

from conftest import ROOT, run
from mpimem.errors import MpimemError
from mpimem.cli.studyplan import load_study, plan

STUDIES = ROOT / "jobs" / "studies"


def study(name):
    return load_study(str(STUDIES / f"{name}.toml"))


def opts(args):
    """--key value pairs and bare flags of an argument list, as a dict (flags -> True)."""
    out, i = {}, 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[args[i]] = args[i + 1]
            i += 2
        else:
            out[args[i]] = True
            i += 1
    return out


TOY = """
[study]
name = "toy"
datasets = ["a", "b"]
workers = [1, 3]
seeds = [0, 1]
eval_every = 0.5
[datasets.a]
n = 100
d = 10
epochs = 2
[datasets.b]
like = "rcv1"
n = 50
d = 40
[train]
schedule = "bottou"
gamma = 1.0
memory = true
[[methods]]
label = "top-2"
compressor = "top_k"
k = 2
[[methods]]
label = "plain"
compressor = "none"
memory = false
gamma = 0.5
[[methods]]
label = "only-b"
datasets = ["b"]
compressor = "rand_k"
k = 30
"""


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return load_study(str(path))


def env(tmp_path, **kw):
    return {"DATA_DIR": str(tmp_path / "data"), **{k: str(v) for k, v in kw.items()}}


def test_expansion_datasets_methods_workers_seeds(toy, tmp_path):
    runs = plan(toy, env(tmp_path))
    want = [(ds, m, w, s) for ds, m, w, s in
            itertools.product("ab", ("top-2", "plain", "only-b"), (1, 3), (0, 1))
            if not (m == "only-b" and ds == "a")]
    assert [(r.dataset, r.label, r.workers, r.seed) for r in runs] == want
    assert [r.index for r in runs] == list(range(len(want)))


@pytest.mark.parametrize("name", ["theory", "qsgd", "scaling", "weak"])
def test_each_job_script_array_covers_its_study(name, tmp_path):
    """#SBATCH --array=0-(N-1) of jobs/NAME.sbatch is one task per run of the study."""
    script = (ROOT / "jobs" / f"{name}.sbatch").read_text()
    last = int(re.search(r"^#SBATCH --array=0-(\d+)$", script, re.M).group(1))
    assert len(plan(study(name), env(tmp_path))) == last + 1


def test_arguments_of_a_run(toy, tmp_path):
    runs = plan(toy, env(tmp_path))
    top = opts(runs[0].args)          # a, top-2, W=1, seed 0
    assert top == {"--schedule": "bottou", "--gamma": "1.0", "--memory": True,
                   "--compressor": "top_k", "--k": "2", "--epochs": "2",
                   "--eval-every": "0.5", "--mode": "sync", "--seed": "0"}
    plain = opts(next(r for r in runs if r.label == "plain" and r.seed == 1).args)
    assert plain["--no-memory"] is True and "--memory" not in plain   # method beats [train]
    assert plain["--gamma"] == "0.5" and plain["--seed"] == "1"
    assert opts(next(r for r in runs if r.dataset == "b").args)["--epochs"] == "1"
    assert all(r.checkpoint_args == () and r.mode == "sync" for r in runs)


def test_environment_overrides(toy, tmp_path):
    e = env(tmp_path, DATASETS="b", METHODS="only-b,plain", WORKERS="2", SEEDS="7 8",
            EPOCHS=0.5, EVAL_EVERY=0.1, BATCH_SIZE=4, MODE="async", CHECKPOINT_EVERY="10m",
            EXTRA_ARGS="--async-step mean --lam 0.01")
    runs = plan(toy, e)
    assert [(r.label, r.workers, r.seed) for r in runs] == [
        ("plain", 2, 7), ("plain", 2, 8), ("only-b", 2, 7), ("only-b", 2, 8)]  # study order
    o = opts(runs[0].args)
    assert (o["--epochs"], o["--eval-every"], o["--batch-size"], o["--mode"]) == \
        ("0.5", "0.1", "4", "async")
    assert runs[0].args[-4:] == ("--async-step", "mean", "--lam", "0.01")
    assert runs[0].mode == "async"
    assert runs[0].checkpoint_args == ("--checkpoint-every", "10m")   # every mode checkpoints
    sync = plan(toy, dict(e, MODE="sync"))[0]
    assert sync.checkpoint_args == ("--checkpoint-every", "10m")


def test_synthetic_data_naming(toy, tmp_path):
    e = env(tmp_path)
    a = plan(toy, e)[0]
    assert (a.data, a.synthetic, a.n, a.d, a.like) == (
        str(tmp_path / "data" / "synth-a-n100-d10-s1.h5"), True, 100, 10, "a")
    b = plan(toy, dict(e, DATASETS="b", N_B=60, D=45, DATA_SEED=3))[0]
    assert b.data == str(tmp_path / "data" / "synth-rcv1-n60-d45-s3.h5") and b.like == "rcv1"
    weak = plan(toy, dict(e, DATASETS="a", N_PER_WORKER=20))
    assert {(r.workers, r.n) for r in weak} == {(1, 20), (3, 60)}
    assert all(f"-n{r.n}-d10-" in r.data for r in weak)
    # a staged <name>.h5 is used as it is; DATA_<NAME> names a file explicitly
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.h5").write_bytes(b"")
    staged = plan(toy, e)[0]
    assert (staged.data, staged.synthetic, staged.n) == (str(tmp_path / "data" / "a.h5"), False,
                                                         None)
    assert plan(toy, dict(e, N=100))[0].synthetic          # a size override: generate
    assert plan(toy, dict(e, DATA_A="/x/real.h5"))[0].data == "/x/real.h5"


def test_study_settings_of_the_paper(tmp_path):
    """Study 1 and 3 and weak say the paper's L2 placement; study 2 the paper's QSGD levels."""
    e = env(tmp_path)
    for name in ("theory", "scaling", "weak"):
        assert all(opts(r.args)["--l2"] == "worker" for r in plan(study(name), e)), name
    for name in ("scaling", "weak"):
        assert {r.mode for r in plan(study(name), e)} == {"async"}, name
    levels = {r.label: opts(r.args).get("--levels") for r in plan(study("qsgd"), e)}
    assert levels == {"top-1": None, "rand-1": None, "QSGD-s256": "256", "QSGD-s16": "16",
                      "QSGD-s4": "4", "ef21-top1": None}


@pytest.mark.parametrize("name, datasets", [("theory", ["epsilon", "rcv1"]), ("qsgd", ["epsilon"])])
def test_ef21_is_its_own_method_of_study_1_and_2(name, datasets, tmp_path):
    """EF21 runs as method "ef21" with top-1 (the study's k), with the study's other settings
    except the steps, which it leaves to mpimem's EF21 default (the method's `defaults`);
    every other method of the study runs Mem-SGD (no --method: mpimem's default)."""
    runs = plan(study(name), env(tmp_path))
    ef21 = [r for r in runs if "--method" in r.args]
    assert [(r.dataset, r.label) for r in ef21] == [(ds, "ef21-top1") for ds in datasets]
    for r in ef21:
        o = opts(r.args)
        assert (o["--method"], o["--compressor"], o["--k"], o["--memory"]) == \
            ("ef21", "top_k", "1", True)
        (top,) = [t for t in runs if t.label == "top-1" and t.dataset == r.dataset]
        steps = ("--schedule", "--gamma", "--shift")
        assert not set(steps) & set(o)
        same = {k: v for k, v in opts(top.args).items()
                if k not in ("--compressor", "--k", *steps)}
        assert {k: v for k, v in o.items() if k in same} == same


@pytest.mark.parametrize("change, message", [
    (dict(METHODS="top-2 top-3"), "unknown label(s) top-3"),
    (dict(DATASETS="c"), "data set 'c' is not described"),
    (dict(MODE="lockfree"), "argument --mode: invalid choice: 'lockfree'"),
    (dict(EXTRA_ARGS="--gama 2"), "unrecognized arguments: --gama 2"),
    (dict(EXTRA_ARGS="--lam '0.1"), "EXTRA_ARGS: No closing quotation"),
    (dict(DATASETS="a", METHODS="only-b"), None),                  # nothing to run: no error
    (dict(BATCH_SIZE="four"), "argument --batch-size: invalid int value: 'four'"),
    (dict(WORKERS="1 two"), "WORKERS entry must be an integer, got 'two'"),
    (dict(N="1e3"), "N of a must be an integer, got '1e3'"),
])
def test_refusals(toy, tmp_path, change, message):
    if message is None:
        assert plan(toy, env(tmp_path, **change)) == []
        return
    with pytest.raises(MpimemError, match=re.escape(message)):
        plan(toy, env(tmp_path, **change))


@pytest.mark.parametrize("change, message", [
    (dict(WORKERS="0"), "WORKERS entry must be an integer >= 1, got '0'"),
    (dict(WORKERS="2 -1"), "WORKERS entry must be an integer >= 1, got '-1'"),
    (dict(EPOCHS="-1"), "EPOCHS=-1: --epochs must be > 0 and finite, got -1.0"),
    (dict(EPOCHS="nan"), "EPOCHS=nan: --epochs must be > 0 and finite, got nan"),
    (dict(EPOCHS="inf"), "EPOCHS=inf: --epochs must be > 0 and finite, got inf"),
    (dict(BATCH_SIZE="0"), "BATCH_SIZE=0: --batch-size must be >= 1, got 0"),
    (dict(EVAL_EVERY="0"), "EVAL_EVERY=0: --eval-every must be > 0 epochs, got 0.0"),
    (dict(EVAL_EVERY="-1"), "EVAL_EVERY=-1: --eval-every must be > 0 epochs"),
    (dict(CHECKPOINT_EVERY="abc"), "CHECKPOINT_EVERY=abc: --checkpoint-every must be a number of "
                                   "rounds (500) or a time (30s, 5m, 1h) or 'off', got 'abc'"),
    (dict(CHECKPOINT_EVERY="0"), "CHECKPOINT_EVERY=0: --checkpoint-every must be > 0"),
    (dict(D="0"), "D of a must be an integer >= 1, got '0'"),
    (dict(N="-5"), "N of a must be an integer >= 1, got '-5'"),
    (dict(N_PER_WORKER="0"), "N_PER_WORKER of a must be an integer >= 1, got '0'"),
    (dict(EXTRA_ARGS="--keep-checkpoints 0"), "--keep-checkpoints must be >= 1, got 0"),
    (dict(EXTRA_ARGS="--epochs nan"), "run 0 (a top-2 W=1): --epochs must be > 0 and finite"),
])
def test_every_setting_is_checked_before_the_first_run(toy, tmp_path, change, message):
    """Settings the train parser lets through but `mpimem train` refuses at start (issue 18):
    refused by the planner, naming the variable and its value, before any run is launched."""
    with pytest.raises(MpimemError, match=re.escape(message)):
        plan(toy, env(tmp_path, **change))


def test_a_bad_environment_setting_stops_the_job_script_in_one_line(tmp_path):
    proc = run(["bash", "jobs/common.sh", "count", "theory"], timeout=60, cwd=ROOT,
               env={"WORKERS": "0", "PYTHON": sys.executable, "DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "WORKERS entry must be an integer >= 1, got '0'" in proc.stderr


def test_valid_environment_settings_still_plan(toy, tmp_path):
    runs = plan(toy, env(tmp_path, EPOCHS="0.5", EVAL_EVERY="0.1", BATCH_SIZE="2",
                         CHECKPOINT_EVERY="10m", WORKERS="1 2"))
    assert runs and all(r.checkpoint_args == ("--checkpoint-every", "10m") for r in runs)
    assert all(opts(r.args)["--epochs"] == "0.5" for r in runs)


def test_a_mode_or_option_mpimem_lacks_is_an_error_not_a_fallback(tmp_path):
    """The study itself asks for what this mpimem cannot run: refused, never run as sync."""
    for text, message in (
            (TOY.replace('name = "toy"', 'name = "toy"\nmode = "hogwild"'),
             "argument --mode: invalid choice: 'hogwild'"),
            (TOY.replace("memory = true", "memory = true\nquiet = false"),
             "unrecognized arguments: --no-quiet")):
        toml = tmp_path / "s.toml"
        toml.write_text(text)
        with pytest.raises(MpimemError, match=re.escape(message)):
            plan(load_study(str(toml)), env(tmp_path))


def test_run_output_is_what_bash_evaluates(tmp_path):
    """`python -m mpimem.cli.studyplan run` prints assignments; bash's eval gets the same words."""
    e = {"DATA_DIR": str(tmp_path), "N": "300", "D": "20", "STUDY": "qsgd",
         "EXTRA_ARGS": "--eval-every '0.5'"}
    toml = str(STUDIES / "qsgd.toml")
    script = (f'eval "$({sys.executable} -m mpimem.cli.studyplan run {toml} 2)" && '
              'printf "%s\\n" "$RUN_LABEL" "$RUN_DATA" "$RUN_N" "${RUN_ARGS[@]}"')
    proc = run(["bash", "-c", script], timeout=60, env=e, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    want = plan(study("qsgd"), e)[2]
    assert proc.stdout.splitlines() == [want.label, want.data, "300", *want.args]


def test_refused_study_is_one_line_exit_2(tmp_path):
    """The job scripts' entry point (bash jobs/common.sh) fails at once on a study it cannot run
    as written; before, MODE was passed on unchecked (and async fell back to sync)."""
    proc = run(["bash", "jobs/common.sh", "count", "theory"], timeout=60, cwd=ROOT,
               env={"MODE": "bogus", "PYTHON": sys.executable, "DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mpimem: error: study ") and "--mode" in proc.stderr
    ok = run([sys.executable, "-m", "mpimem.cli.studyplan", "count", str(STUDIES / "theory.toml")],
             timeout=60, cwd=ROOT, env={"DATA_DIR": str(tmp_path)})
    assert ok.returncode == 0 and ok.stdout == "14\n", ok.stderr


# -- topologies (issue 12): TOPOLOGY and GROUP_SIZE pass through; W+1 ranks with the server -------
from mpimem.run.config import TOPOLOGIES  # noqa: E402

NEW_TOPOLOGIES = pytest.mark.skipif(
    "hierarchical" not in TOPOLOGIES,
    reason="this mpimem's train parser has no --topology sparse-allreduce|hierarchical yet")


def test_topology_passes_through_and_sets_the_ranks(toy, tmp_path):
    """No TOPOLOGY: no --topology (mpimem's default, the server), W+1 ranks; TOPOLOGY=allgather:
    `--topology allgather` after --mode, W ranks; planner and meta agree with the parsed config."""
    default = plan(toy, env(tmp_path, DATASETS="a", METHODS="top-2"))
    assert all("--topology" not in r.args for r in default)
    assert [(r.topology, r.workers, r.ranks) for r in default] == [
        ("server", 1, 2), ("server", 1, 2), ("server", 3, 4), ("server", 3, 4)]
    ag = plan(toy, env(tmp_path, DATASETS="a", METHODS="top-2", TOPOLOGY="allgather"))
    assert [(r.topology, r.workers, r.ranks) for r in ag] == [
        ("allgather", 1, 1), ("allgather", 1, 1), ("allgather", 3, 3), ("allgather", 3, 3)]
    args = list(ag[0].args)
    assert args[args.index("--mode"):args.index("--mode") + 4] == [
        "--mode", "sync", "--topology", "allgather"]
    assert ag[0].checkpoint_args == () and "--group-size" not in args


def test_scaling_study_ranks_per_topology(tmp_path):
    """Study 3 runs the asynchronous server (W+1 ranks, at most 25 = its --ntasks); with
    MODE=sync TOPOLOGY=allgather every run takes W ranks (at most 24)."""
    runs = plan(study("scaling"), env(tmp_path))
    assert {(opts(r.args)["--topology"], r.topology, r.mode) for r in runs} == {
        ("server", "server", "async")}
    assert all(r.ranks == r.workers + 1 for r in runs) and max(r.ranks for r in runs) == 25
    ag = plan(study("scaling"), env(tmp_path, MODE="sync", TOPOLOGY="allgather"))
    assert {(r.topology, r.mode) for r in ag} == {("allgather", "sync")}
    assert all(r.ranks == r.workers for r in ag) and max(r.ranks for r in ag) == 24


@NEW_TOPOLOGIES
@pytest.mark.parametrize("topology, group", [("sparse-allreduce", None), ("hierarchical", None),
                                             ("hierarchical", "2")])
def test_new_topologies_pass_through(toy, tmp_path, topology, group):
    e = env(tmp_path, DATASETS="a", METHODS="top-2", SEEDS="0", WORKERS="2 4", TOPOLOGY=topology)
    if group:
        e["GROUP_SIZE"] = group
    runs = plan(toy, e)
    assert [(r.topology, r.workers, r.ranks) for r in runs] == [(topology, 2, 2), (topology, 4, 4)]
    o = opts(runs[0].args)
    assert o["--topology"] == topology and o.get("--group-size") == group


@pytest.mark.parametrize("change, message", [
    (dict(TOPOLOGY="ring"), "argument --topology: invalid choice: 'ring'"),
    (dict(TOPOLOGY="allgather", MODE="async"),
     "--mode async needs --topology server, got --topology allgather (with TOPOLOGY=allgather "
     "set MODE=sync)"),
    (dict(TOPOLOGY="hierarchical", GROUP_SIZE="two"), "GROUP_SIZE must be an integer, got 'two'"),
    pytest.param(dict(TOPOLOGY="allgather", GROUP_SIZE="2"),
                 "--group-size (GROUP_SIZE) needs --topology hierarchical, got --topology "
                 "allgather", marks=NEW_TOPOLOGIES),
    pytest.param(dict(GROUP_SIZE="2"), "needs --topology hierarchical, got --topology server",
                 marks=NEW_TOPOLOGIES),
    pytest.param(dict(TOPOLOGY="hierarchical", GROUP_SIZE="0"),
                 "run 0 (a top-2 W=1): --group-size must satisfy 1 <= G <= W = 1, got 0",
                 marks=NEW_TOPOLOGIES),
    pytest.param(dict(TOPOLOGY="hierarchical", GROUP_SIZE="2", WORKERS="2 1"),
                 "run 2 (a top-2 W=1): --group-size must satisfy 1 <= G <= W = 1, got 2",
                 marks=NEW_TOPOLOGIES),
])
def test_topology_refusals(toy, tmp_path, change, message):
    with pytest.raises(MpimemError, match=re.escape(message)):
        plan(toy, env(tmp_path, **change))


def test_topology_reaches_the_job_script_and_meta(tmp_path):
    """What jobs/common.sh evaluates: RUN_TOPOLOGY and RUN_RANKS (the world it launches), and the
    meta.json text with the topology and the ranks; the study's async server refuses a serverless
    TOPOLOGY without MODE=sync in one line, exit 2, before any run."""
    e = {"DATA_DIR": str(tmp_path), "N": "300", "D": "20", "STUDY": "scaling"}
    toml = str(STUDIES / "scaling.toml")
    script = (f'eval "$({sys.executable} -m mpimem.cli.studyplan run {toml} 1)" && '
              'printf "%s\\n" "$RUN_TOPOLOGY" "$RUN_RANKS" "$RUN_WORKERS" "$RUN_META"')
    for extra, want in (({}, ["server", "3", "2"]),
                        ({"TOPOLOGY": "allgather", "MODE": "sync"}, ["allgather", "2", "2"])):
        proc = run(["bash", "-c", script], timeout=60, env=dict(e, **extra), cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.splitlines()
        assert out[:3] == want
        meta = __import__("json").loads(out[3])
        assert (meta["topology"], meta["ranks"], meta["workers"]) == (want[0], int(want[1]), 2)
    bad = run(["bash", "jobs/common.sh", "count", "scaling"], timeout=60, cwd=ROOT,
              env={"TOPOLOGY": "allgather", "PYTHON": sys.executable, "DATA_DIR": str(tmp_path)})
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    assert "--mode async needs --topology server" in bad.stderr and "MODE=sync" in bad.stderr
