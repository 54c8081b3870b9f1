"""What users look for in a repository: LICENSE (agreeing with pyproject), CITATION.cff (the
software and, preferred, the paper), .gitignore entries for what the job scripts leave behind,
and the cluster-MPI recipe in jobs/README.md in the order that works. No YAML library is
needed: CITATION.cff is checked line by line (top-level keys, the paper's fields)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def top_level(text):
    """{key: value} of the unindented `key: value` lines of a YAML file (quotes removed)."""
    keys = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z][a-z-]*):\s*(.*?)\s*", line)
        if match:
            keys[match.group(1)] = match.group(2).strip('"')
    return keys


def test_license_is_mit_as_pyproject_says():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "MIT" and text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the mpimem authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_cff_names_the_software_and_the_paper():
    text = (ROOT / "CITATION.cff").read_text()
    keys = top_level(text)
    assert keys["cff-version"] == "1.2.0" and keys["type"] == "software"
    assert "mpimem" in keys["title"] and keys["message"]
    assert keys["license"] == "MIT"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert keys["version"] == version
    assert keys["authors"] == "" and keys["preferred-citation"] == ""   # both are blocks
    paper = text.split("\npreferred-citation:\n", 1)[1]
    assert all(line.startswith("  ") for line in paper.splitlines())    # the block to the end
    assert 'title: "Sparsified SGD with Memory"' in paper
    assert re.findall(r"family-names: (\w+)", paper) == ["Stich", "Cordonnier", "Jaggi"]
    assert "year: 2018" in paper and "NeurIPS 2018" in paper and "1809.07599" in paper
    assert "\t" not in text                                  # YAML forbids tabs for indentation


def test_gitignore_covers_data_locks_and_slurm_output():
    entries = set((ROOT / ".gitignore").read_text().split())
    assert {"/data/", "*.lock", "slurm-*.out", ".venv/", "/results/"} <= entries
    assert "data/" not in entries      # unanchored, it would also hide the mpimem/data package


def test_cluster_mpi_recipe_builds_mpi4py_before_installing_mpimem():
    text = (ROOT / "jobs" / "README.md").read_text()
    build = text.index("MPICC=$(which mpicc) pip install --no-binary mpi4py mpi4py")
    install = text.index("pip install -e '.[figures]'")
    assert build < install
    assert "pip install -e .` (without" not in text          # the old order, which did nothing


def test_readme_says_what_the_first_make_demo_costs():
    """`make demo`'s "about 20 s" holds with a warm kernel cache; the README says so and what
    the first run adds: the warm step (`python -m mpimem.cli.warm`, about 60 s of CPU, run by
    `make install`)."""
    text = " ".join((ROOT / "README.md").read_text().split())
    start = text.index("`make demo` takes about 20 s")
    paragraph = text[start: text.index("It generates", start)]
    assert "once the compiled kernels are cached" in paragraph, paragraph
    assert "`python -m mpimem.cli.warm`, about 60 s of CPU on one idle core" in paragraph
    assert "`make install`" in paragraph and "first `make demo` costs about 1.5 min" in paragraph
