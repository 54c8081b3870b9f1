"""The layers of docs/design.md as import contracts (pyproject.toml [tool.importlinter]).

`lint-imports` (import-linter, on grimp's import graph: imports inside functions count) must
keep every contract on the tree as it is, and must break when a layer breach or a cycle is
added on purpose (checked on a copy of the tree, so the contracts cannot pass vacuously).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path):
    """`lint-imports` over the packages of `tree` (its pyproject.toml's contracts)."""
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: `make install` installs import-linter (the test extra)")
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def copy_tree(dst: Path) -> Path:
    for name in ("mpimem", "analysis", "bench"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_every_layer_contract():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", ""), proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    # core may not reach MPI, even through a function-local import
    ("mpimem/core/step.py", "def _breach():\n    from mpimem.comm import mpicall\n", "core"),
    ("mpimem/core/model.py", "import mpi4py\n", "core"),
    # the run layer may not depend on the commands (today's config -> studyplan cycle)
    ("mpimem/run/config.py", "def _breach():\n    from mpimem.cli import studyplan\n", "run"),
    ("mpimem/reference.py", "from mpimem.core import rng\n", "reference"),
    ("mpimem/comm/tree.py", "from mpimem.run import checkpoint\n", "comm"),
    ("mpimem/core/kernels.py", "import analysis\n", "tools"),
])
def test_a_breach_added_on_purpose_breaks_its_contract(tmp_path, module, line, contract):
    tree = copy_tree(tmp_path)
    with open(tree / module, "a") as fh:
        fh.write("\n\n" + line)
    proc = lint(tree)
    assert proc.returncode != 0, proc.stdout
    assert "BROKEN" in proc.stdout, proc.stdout


def test_a_cycle_added_on_purpose_breaks_the_acyclic_contract(tmp_path):
    """schedule -> step is allowed (core imports core); step -> schedule closes a cycle."""
    tree = copy_tree(tmp_path)
    with open(tree / "mpimem/core/step.py", "a") as fh:
        fh.write("\n\ndef _cycle():\n    from mpimem.core import schedule\n")
    proc = lint(tree)
    assert proc.returncode != 0, proc.stdout
    assert "no import cycles" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout
