"""Configuration: the TOML file checked against each option's type (one line naming the setting
and the file), dashes and underscores in keys, the data set settable in a file, `resume` refused
there, and the Python version pyproject promises against what the sources import; the TOML
that `--dump-config` writes read back to the same settings and the same run; the example
configs in docs/configs/ against the study files."""
import dataclasses
import re
import tomllib

import pytest

from conftest import MPIEXEC, ROOT, mpimem_cmd, run, run_cli, run_mpi
from mpimem.run.config import FIELD_TYPES, TrainConfig, resolve
from mpimem.cli.options import NOT_IN_FILE, dump_toml, load_toml, merge
from mpimem.cli.studyplan import study_examples
from mpimem.data.dataset import read_meta
from mpimem.errors import MpimemError
from mpimem.run.runfile import read_run


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------- Python version
def python_minimum(spec: str) -> tuple:
    """(major, minor) of a `>=X.Y` requires-python specifier."""
    found = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert found, f"requires-python {spec!r} states no minimum"
    return int(found[1]), int(found[2])


def test_requires_python_allows_tomllib_where_the_sources_import_it():
    """tomllib is in the standard library from Python 3.11 on: a 3.10 user must not be able to
    install a package whose modules (or job scripts) import it."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        spec = tomllib.load(fh)["project"]["requires-python"]
    sources = [p for d in ("mpimem", "analysis", "bench", "jobs") for p in (ROOT / d).rglob("*")
               if p.suffix in (".py", ".sh")]
    users = [p.name for p in sources
             if re.search(r"^\s*(import tomllib|from tomllib import)", p.read_text(), re.M)]
    assert users, "the scan finds no tomllib import: update this test"
    assert python_minimum(spec) >= (3, 11), (spec, users)


# ---------------------------------------------------------------------- TOML types
BAD_VALUES = [
    ('memory = "no"', "memory", "a boolean"),
    ('quiet = "false"', "quiet", "a boolean"),
    ('k = "five"', "k", "an integer"),
    ("seed = 1.5", "seed", "an integer"),
    ("batch_size = true", "batch_size", "an integer"),
    ('gamma = "2"', "gamma", "a number"),
    ("epochs = false", "epochs", "a number"),
    ("compressor = 3", "compressor", "a string"),
    ("shift = [1, 2]", "shift", "a string"),
]


@pytest.mark.parametrize("line,key,kind", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_a_value_of_the_wrong_type_is_refused_naming_setting_and_file(line, key, kind, tmp_path):
    path = write(tmp_path, f"[train]\n{line}\n")
    with pytest.raises(MpimemError) as err:
        load_toml(path)
    message = str(err.value)
    assert message.startswith(f"{path}: setting '{key}' must be {kind}"), message
    assert ", got " in message and "\n" not in message


def test_values_of_the_right_type_are_taken_numbers_widened_where_natural(tmp_path):
    path = write(tmp_path, 'memory = false\nquiet = true\nk = 5\ngamma = 2\nepochs = 1.5\n'
                           'shift = 5\ncheckpoint_every = 500\ncompressor = "rand_k"\n')
    got = load_toml(path)
    assert got == dict(memory=False, quiet=True, k=5, gamma=2.0, epochs=1.5, shift="5",
                       checkpoint_every="500", compressor="rand_k")
    assert type(got["gamma"]) is float


def test_keys_take_dashes_or_underscores_but_not_both(tmp_path):
    dashed = load_toml(write(tmp_path, "batch-size = 4\nk-fraction = 0.5\n"))
    assert dashed == load_toml(write(tmp_path, "batch_size = 4\nk_fraction = 0.5\n", "u.toml"))
    assert merge({}, write(tmp_path, "[train]\nbatch-size = 4\n", "t.toml")).batch_size == 4
    with pytest.raises(MpimemError, match="'batch_size' given twice"):
        load_toml(write(tmp_path, "batch-size = 4\nbatch_size = 8\n", "both.toml"))


def test_unknown_and_launch_only_settings_are_refused_by_name(tmp_path):
    with pytest.raises(MpimemError, match=r"unknown setting\(s\) no_such"):
        load_toml(write(tmp_path, "no-such = 1\n"))
    with pytest.raises(MpimemError, match="'resume' cannot be set in a config file"):
        load_toml(write(tmp_path, 'resume = "RUN.h5"\n', "r.toml"))
    with pytest.raises(MpimemError, match="'overwrite' cannot be set in a config file"):
        load_toml(write(tmp_path, "overwrite = true\n", "o.toml"))


def test_the_data_set_can_come_from_the_file_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, 'data = "from-file.h5"\n')
    assert merge({"data": None}, path).data == "from-file.h5"
    assert merge({"data": "cli.h5"}, path).data == "cli.h5"


# ---------------------------------------------------------------------- real launches
def test_bad_toml_under_mpiexec_one_line_and_exit_2_on_every_rank(eps, tmp_path):
    """Each rank's own exit status is printed by a shell around it (mpiexec reports one)."""
    path = write(tmp_path, "[train]\nmemory = \"no\"\n")
    train = " ".join(mpimem_cmd("train", eps, "--config", path, "--out", tmp_path / "r.h5"))
    proc = run([MPIEXEC, "-n", "2", "sh", "-c", f'{train}; echo "rank-exit $?"'], timeout=120,
               env={"MPIMEM_EXPECT_RANKS": "2"})
    assert proc.stdout.split() == ["rank-exit", "2", "rank-exit", "2"], proc.stdout
    assert proc.stderr.strip() == (f"mpimem: error: {path}: setting 'memory' must be a boolean "
                                   f"(true or false), got string 'no'"), proc.stderr
    assert not (tmp_path / "r.h5").exists()


def test_data_from_the_file_and_async_default_steps_said_once(eps, tmp_path):
    """A user who only adds --mode async gets the paper's asynchronous steps (bottou, gamma = 1),
    told in one line by rank 0 and recorded in the run file; the data set comes from the TOML."""
    path = write(tmp_path, f'[train]\ndata = "{eps}"\ncompressor = "top_k"\nk = 4\n')
    out = tmp_path / "a.h5"
    proc = run_mpi(3, ["train", "--config", path, "--mode", "async", "--epochs", "0.5",
                       "--out", out], timeout=180, check=True)
    notes = [line for line in proc.stderr.splitlines() if "note:" in line]
    assert notes == ["mpimem train: note: --mode async: steps bottou gamma = 1 (the paper's "
                     "asynchronous setting; give --schedule/--gamma to choose others)"], proc.stderr
    attrs = read_run(out)["attrs"]
    cfg = attrs["config"]
    assert (cfg["schedule"], cfg["gamma"], cfg["mode"], cfg["data"]) == ("bottou", 1.0, "async", eps)
    assert cfg["extra"]["notes"] == [notes[0].split("note: ", 1)[1]]
    assert attrs["status"] == "complete"


# ---------------------------------------------------------------------- --dump-config
AWKWARD = 'a "quoted" \\back\\slash\n\ttab \x00\x1f\x7f \u00fc \U0001F600 # [x] = \'y\'.h5'
DUMPED = [
    TrainConfig(),
    TrainConfig(data=AWKWARD, out="=\"\\\\\"=.h5", compressor="qsgd", levels=256, memory=False,
                gamma=0.1 + 0.2, lam=1e-300, eval_every=1 / 3, epochs=1e16, shift="5d/k",
                checkpoint_every="30s", resume="RUN.h5", overwrite=True),
    TrainConfig(data="d.h5", k_fraction=0.1, samples=12345, gamma=float("inf"), shift="2.5",
                mode="async", async_step="mean", downlink_k=3, seed=2**40, quiet=True),
]


@pytest.mark.parametrize("cfg", DUMPED, ids=["defaults", "awkward", "numbers"])
def test_dumped_toml_loads_back_to_the_same_settings(cfg, tmp_path):
    """Every settable field that is not None comes back with the same value and type (floats
    bit for bit, strings with quotes, backslashes, control and non-ASCII characters); the
    launch-only settings (resume, overwrite) and None values are left out, so the file loads."""
    path = write(tmp_path, dump_toml(cfg, ["a comment"]))
    expect = {name: getattr(cfg, name) for name in FIELD_TYPES
              if name not in NOT_IN_FILE and getattr(cfg, name) is not None}
    got = load_toml(path)
    assert got == expect
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expect.items()}
    assert merge({}, path) == dataclasses.replace(cfg, resume=None, overwrite=False)


def test_a_string_toml_cannot_spell_is_refused_in_one_line():
    with pytest.raises(MpimemError, match="cannot be written as TOML"):
        dump_toml(TrainConfig(data="bad\udcff.h5"))


RESOLVED = [dict(compressor="qsgd", bits=3), dict(compressor="top_k", k_fraction=0.05),
            dict(compressor="rand_k", k=3, shift="5d/k", batch_size=2, averaging="uniform"),
            dict(compressor="none", memory=False, samples=700, lam=0.0, schedule="constant",
                 gamma=0.05)]


@pytest.mark.parametrize("settings", RESOLVED, ids=[r["compressor"] for r in RESOLVED])
def test_a_dumped_resolved_config_resolves_to_itself(settings, tmp_path):
    """resolve(load(dump(resolve(cfg)))) == resolve(cfg): the file pins every resolved value
    (k, levels, lambda, steps, the shift in samples, the evaluation interval)."""
    first = resolve(TrainConfig(data="x.h5", **settings), 1200, 120, 3)
    path = write(tmp_path, dump_toml(first))
    assert resolve(merge({}, path), 1200, 120, 3) == first


def test_dump_config_needs_no_mpiexec_and_the_dump_reused_gives_the_identical_run(eps, tmp_path):
    """`mpimem train DATA --dump-config > run.toml` in one process (W from MPIMEM_EXPECT_RANKS),
    then the same options and `--config run.toml` under mpiexec: bit-identical final x and
    xbar, the same resolved configuration in both run files."""
    opts = ["--compressor", "qsgd", "--bits", "3", "--epochs", "0.2", "--quiet"]
    dumped = run_cli(["train", eps, *opts, "--dump-config"], check=True,
                     env={"MPIMEM_EXPECT_RANKS": "3"})
    assert dumped.stderr == ""
    assert "resolved for n=1200 d=120 and W=2 workers" in dumped.stdout
    assert "levels = 3\n" in dumped.stdout and "resume" not in dumped.stdout
    path = write(tmp_path, dumped.stdout, "run.toml")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    run_mpi(3, ["train", eps, *opts, "--out", a], timeout=180, check=True)
    run_mpi(3, ["train", "--config", path, "--out", b], timeout=180, check=True)
    ra, rb = read_run(a), read_run(b)
    assert ra["attrs"]["status"] == rb["attrs"]["status"] == "complete"
    for key in ("x", "xbar"):
        assert ra["final"][key].tobytes() == rb["final"][key].tobytes(), key
    ca, cb = ra["attrs"]["config"], rb["attrs"]["config"]
    assert (ca.pop("out"), cb.pop("out")) == (str(a), str(b))
    assert ca == cb


def test_dump_config_refuses_resume_and_a_too_small_world_in_one_line(eps):
    proc = run_cli(["train", eps, "--dump-config", "--resume", "r.h5"])
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("mpimem: error: --dump-config prints a new run's settings; it does "
                           "not take --resume\n")
    proc = run_cli(["train", eps, "--dump-config", "--batch-size", "700"],
                   env={"MPIMEM_EXPECT_RANKS": "3"})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("mpimem: error: --batch-size 700 exceeds the smallest shard "
                                  "(600 rows for 2 workers)"), proc.stderr


# ---------------------------------------------------------------------- one validation (issue 18)
@pytest.mark.parametrize("every", ["0", "0s", "0.0", "00", "0m", " 0 "])
def test_a_zero_checkpoint_interval_is_refused_naming_off(every):
    """'0' used to mean 'no checkpoints, not even the final one' while '0s' was refused: both
    are refused now, and the line names the spelling that turns checkpoints off."""
    with pytest.raises(MpimemError, match="--checkpoint-every must be > 0") as err:
        resolve(TrainConfig(checkpoint_every=every), 100, 10, 1)
    assert "--checkpoint-every off writes no checkpoints, not even the final one" in str(err.value)


def test_a_zero_checkpoint_interval_in_toml_is_refused_like_the_command_line(tmp_path):
    for value in ("0", '"0"', '"0s"', "0.0"):
        cfg = merge({}, write(tmp_path, f"[train]\ncheckpoint_every = {value}\n"))
        with pytest.raises(MpimemError, match="--checkpoint-every off"):
            resolve(cfg, 100, 10, 1)


@pytest.mark.parametrize("toml,message", [
    ('checkpoint_every = "abc"', "--checkpoint-every must be a number of rounds"),
    ("checkpoint_every = 300.5", "--checkpoint-every: rounds must be a whole number >= 1, got '300.5'"),
    ("keep_checkpoints = -1", "--keep-checkpoints must be >= 1, got -1"),
    ("keep_checkpoints = 0", "--keep-checkpoints must be >= 1, got 0"),
])
def test_dump_config_refuses_what_train_refuses(eps, tmp_path, toml, message):
    """--dump-config used to write values that `train` then refused: both call
    mpimem.run.config.resolve, which checks the checkpoint settings too."""
    path = write(tmp_path, f"[train]\n{toml}\n")
    with pytest.raises(MpimemError, match=re.escape(message)):
        resolve(merge({}, path), 100, 10, 1)
    proc = run_cli(["train", eps, "--config", path, "--dump-config"])
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert proc.stderr.startswith("mpimem: error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_valid_checkpoint_setting_still_dumps_and_off_is_kept(eps, tmp_path):
    proc = run_cli(["train", eps, "--dump-config", "--checkpoint-every", "off",
                    "--keep-checkpoints", "3"], check=True)
    table = tomllib.loads(proc.stdout)["train"]
    assert (table["checkpoint_every"], table["keep_checkpoints"]) == ("off", 3)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5"])
def test_expect_ranks_that_is_not_a_rank_count_is_one_line(eps, value):
    proc = run_cli(["train", eps, "--dump-config"], env={"MPIMEM_EXPECT_RANKS": value})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("mpimem: error: MPIMEM_EXPECT_RANKS must be a whole number of MPI "
                           f"ranks >= 1, got '{value}'\n")


# ---------------------------------------------------------------------- docs/configs
STUDIES = sorted((ROOT / "jobs" / "studies").glob("*.toml"))
CONFIGS = ROOT / "docs" / "configs"


def study_methods():
    """(study name, study table, method table, file name) for every method of every study."""
    for path in STUDIES:
        with open(path, "rb") as fh:
            study = tomllib.load(fh)
        name = study["study"]["name"]
        for method in study["methods"]:
            yield name, study, method, f"{name}-{method['label']}.toml"


def test_docs_configs_hold_one_example_per_study_method_as_generated():
    expect = {file for *_, file in study_methods()}
    assert {p.name for p in CONFIGS.glob("*.toml")} == expect
    for path in STUDIES:
        for file, text in study_examples(str(path)).items():
            assert (CONFIGS / file).read_text() == text, (
                f"docs/configs/{file} is stale; regenerate: python -c 'import pathlib; from "
                f"mpimem.cli.studyplan import study_examples as e; [pathlib.Path(\"docs/configs\", f)"
                f".write_text(t) for s in pathlib.Path(\"jobs/studies\").glob(\"*.toml\") "
                f"for f, t in e(str(s)).items()]'")


@pytest.mark.parametrize("name,study,method,file", list(study_methods()),
                         ids=[m[3] for m in study_methods()])
def test_each_example_config_loads_matches_its_study_method_and_resolves(name, study, method,
                                                                           file, eps):
    """The file's settings are the study's [train] table overridden by the method's (label,
    datasets and defaults aside), without the settings the method leaves to mpimem's defaults,
    with the study's mode; `mpimem train --config FILE DATA` resolves them."""
    got = load_toml(str(CONFIGS / file))
    want = dict(study.get("train", {}))
    want.update({k: v for k, v in method.items() if k not in ("label", "datasets", "defaults")})
    for key in method.get("defaults", []):
        want.pop(key, None)
        assert key not in got, key
    want["mode"] = study["study"].get("mode", "sync")
    for key, value in want.items():
        assert got[key] == value and type(got[key]) is type(value), (key, got[key], value)
    meta = read_meta(eps)
    cfg = resolve(merge({"data": eps}, str(CONFIGS / file)), meta.n, meta.d, 2)
    assert (cfg.compressor, cfg.memory, cfg.data) == (method["compressor"], method["memory"], eps)
