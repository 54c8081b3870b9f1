"""The settings of `mpimem train` as the user gives them: a TOML file and the command line,
merged over the defaults (defaults < `--config FILE.toml` < command-line options), and written
back as TOML (`mpimem train --dump-config`, and the examples in docs/configs/:
mpimem.cli.studyplan.study_examples).

This is the parsing half of the configuration: it makes a TrainConfig of what the user said and
checks only the types of a file's values. Everything that depends on the data or the world
(k, lambda, the steps, the checks of every setting) is mpimem.run.config.resolve, so the flow is
one way: parse here (cli) -> resolve for this world (run) -> the arrays of the compiled code (core).
"""
import numbers
import tomllib

import numpy as np

from mpimem.errors import MpimemError
from mpimem.run.config import FIELD_TYPES, FIELDS, TrainConfig

NOT_IN_FILE = {"resume": "give --resume on the command line",   # actions of one launch, not
               "overwrite": "give --overwrite on the command line"}  # settings to reuse


NUMBER_OR_TEXT = {"shift", "checkpoint_every"}  # '5d/k' or 0.5, '30s' or 500: numbers allowed


TOML_TYPE = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
             str: "a string"}


def toml_type_name(value) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}
    return names.get(type(value), "date/time")


def toml_value(path: str, key: str, value):
    """`value` checked against the type of setting `key` (FIELD_TYPES): a boolean must be a TOML
    boolean, an integer an integer (not a float or boolean), a number an integer or float (made
    float), a string a string (numbers too for NUMBER_OR_TEXT, made text). MpimemError otherwise."""
    kind = FIELD_TYPES[key]
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind is str and key in NUMBER_OR_TEXT and type(value) in (int, float):
        return str(value)
    if type(value) is kind:
        return value
    raise MpimemError(f"{path}: setting '{key}' must be {TOML_TYPE[kind]}, got "
                      f"{toml_type_name(value)} {value!r}")


def load_toml(path: str) -> dict:
    """Settings from a TOML file: the [train] table if there is one, else the top level. Keys are
    the option names with '-' or '_'; every value is checked against the option's type."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise MpimemError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MpimemError(f"{path}: cannot read the config file: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise MpimemError(f"{path}: not valid TOML: {err}") from None
    table = table.get("train", table)
    if not isinstance(table, dict):
        raise MpimemError(f"{path}: 'train' must be a table ([train]), got {toml_type_name(table)}")
    settings = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in settings:
            raise MpimemError(f"{path}: setting '{name}' given twice ('-' and '_' spellings)")
        settings[name] = value
    unknown = sorted(set(settings) - FIELDS)
    if unknown:
        raise MpimemError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    for name in settings:
        if name in NOT_IN_FILE:
            raise MpimemError(f"{path}: setting '{name}' cannot be set in a config file; "
                              f"{NOT_IN_FILE[name]}")
    return {name: toml_value(path, name, value) for name, value in settings.items()}


def merge(cli: dict, toml_path: str = None) -> TrainConfig:
    """defaults < TOML < command line (options left at None on the command line do not count)."""
    settings = load_toml(toml_path) if toml_path else {}
    settings.update({k: v for k, v in cli.items() if v is not None and k in FIELDS})
    return TrainConfig(**settings)


# ---------------------------------------------------------------------- writing TOML
TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quote, backslash and the control characters
    (U+0000..U+001F, U+007F) escaped, everything else literal (UTF-8). A lone surrogate (an
    undecodable byte of a file name) has no TOML spelling: MpimemError."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise MpimemError(f"{text!r} cannot be written as TOML (not valid Unicode)")
    out = (TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ord(ch) == 0x7F
                                    else ch) for ch in text)
    return '"' + "".join(out) + '"'


def toml_scalar(value) -> str:
    """A bool, int, float or str as a TOML value; a float by repr, which tomllib reads back
    to the same double (inf and nan included)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))   # not numpy's repr, 'np.float64(...)'
    return toml_string(value)


def toml_table(settings: dict, comments=()) -> str:
    """`settings` (name: bool/int/float/str) as a [train] table, `comments` as '# ' lines above."""
    lines = [f"# {c}" for c in comments] + ["[train]"]
    lines += [f"{name} = {toml_scalar(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def dump_toml(cfg: TrainConfig, comments=()) -> str:
    """The settings of `cfg` as TOML that load_toml reads back to the same values: every field
    in declaration order except those a file cannot set (NOT_IN_FILE), `extra`, and the ones
    left at None (their defaults)."""
    settings = {name: getattr(cfg, name) for name in FIELD_TYPES
                if name not in NOT_IN_FILE and getattr(cfg, name) is not None}
    return toml_table(settings, comments)
