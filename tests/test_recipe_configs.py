"""The shipped language-modelling configs spell out each objective's default run exactly."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_dicts(parsed) -> list[dict]:
    return [{f.name: getattr(group, f.name) for f in dataclasses.fields(group)} for group in parsed]


@pytest.mark.parametrize("objective", ["mlm", "clm", "general"])
def test_language_modeling_config_equals_the_objective_defaults(objective):
    recipe = load_recipe("language_modeling")
    config = RECIPES / "configs" / f"language_modeling_{objective}.yaml"
    from_config = as_dicts(recipe.parse_args([str(config)]))
    from_flags = as_dicts(recipe.parse_args(["--objective", objective]))
    assert from_config == from_flags
    assert from_config[0]["objective"] == objective
