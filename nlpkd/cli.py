"""Command-line parsing shared by the recipes: flags, or a YAML/JSON config file as the only argument."""

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def peek_argument(argv: list[str] | None, name: str, default: str) -> str:
    """The value of `--name` in `argv` (flags, or a single config file) before full parsing, e.g. to choose the
    defaults that depend on it; `default` when absent."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES) and Path(argv[0]).is_file():
        values = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8")) or {}
        return str(values.get(name, default)) if isinstance(values, dict) else default
    for index, token in enumerate(argv):
        if token == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return default


def parse_recipe_args(
    dataclass_types: tuple[type, ...], defaults: dict[str, Any], argv: list[str] | None = None
) -> tuple:
    """Parse `argv` (default: sys.argv[1:]) into `dataclass_types`.

    `defaults` override the dataclasses' own defaults (e.g. the recipe's output_dir and epochs); a config file
    overrides `defaults`, and flags override both.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = {f.name for dataclass_type in dataclass_types for f in dataclasses.fields(dataclass_type)}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"Recipe defaults name unknown arguments {unknown}; every default must be a field.")
    parser = HfArgumentParser(dataclass_types)
    parser.set_defaults(**defaults)
    if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES):
        path = Path(argv[0])
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist; pass an existing .yaml/.yml/.json file.")
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}  # YAML is a superset of JSON
        if not isinstance(values, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of argument names to values.")
        check_choices(dataclass_types, values, str(path))
        return parser.parse_dict({**defaults, **values})
    return parser.parse_args_into_dataclasses(args=argv)


def check_choices(dataclass_types: tuple[type, ...], values: dict[str, Any], source: str) -> None:
    """The `choices` check argparse makes on flags, for a config file's `values` (parse_dict skips it): a clear
    error naming the field, the value, the file and the choices."""
    for dataclass_type in dataclass_types:
        for f in dataclasses.fields(dataclass_type):
            choices = f.metadata.get("choices")
            if choices is not None and f.name in values and values[f.name] not in choices:
                allowed = ", ".join(map(str, choices))
                raise ValueError(
                    f"{f.name}={values[f.name]!r} is not a choice: pass --{f.name} with one of {allowed} (or set it "
                    f"so in {source})."
                )
