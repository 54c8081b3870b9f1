"""Small data sets for the tests, made by the real `mpimem data synth` / `data optimum`."""
from conftest import run_cli


def make_dataset(path, like, n, d, seed=1, optimum=True):
    """Generate a look-alike set with its optimum f* stored; returns the path as str."""
    run_cli(["data", "synth", "--like", like, "--n", n, "--d", d, "--seed", seed, path], check=True)
    if optimum:
        run_cli(["data", "optimum", path], check=True, timeout=300)
    return str(path)
