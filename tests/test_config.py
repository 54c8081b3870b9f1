"""Configuration: the TOML file checked against each option's type (one line naming the setting
and the file), dashes and underscores in keys, the data set settable in a file, `resume` refused
there, and the Python version pyproject promises against what the sources import."""
import re
import tomllib

import pytest

from conftest import MPIEXEC, ROOT, mpimem_cmd, run, run_mpi
from mpimem.config import load_toml, merge
from mpimem.errors import MpimemError
from mpimem.runfile import read_run


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
