"""The shipped translation config spells out exactly the recipe's default run."""

import dataclasses
import re
from pathlib import Path

import pytest

from nlpkd.recipes import translation as recipe

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "configs"


TYPES = (
    recipe.TranslationDataArguments,
    recipe.TeacherArguments,
    recipe.StudentArguments,
    recipe.Seq2SeqDistillationArguments,
)


def test_shipped_config_spells_out_the_default_run():
    config = str(CONFIGS / "translation.yaml")
    from_config = recipe.parse_recipe_args(TYPES, recipe.DEFAULTS, [config])
    from_defaults = recipe.parse_recipe_args(TYPES, recipe.DEFAULTS, [])
    for parsed_config, parsed_default in zip(from_config, from_defaults, strict=True):
        fields = [f.name for f in dataclasses.fields(parsed_config)]
        assert {name: getattr(parsed_config, name) for name in fields} == {
            name: getattr(parsed_default, name) for name in fields
        }
    assert from_config[3].generation_num_beams == 4
    assert from_config[2].student_decoder_layers == 1


@pytest.mark.parametrize(
    "name, value, choices",
    [
        ("eval_split", "dev", "test, validation"),
        ("pseudo_target_selection", "best", "top, closest"),
        ("logit_loss", "l1", "kl, mse, soft_ce"),
    ],
)
def test_a_config_file_gets_the_choices_check_that_flags_get(tmp_path, name, value, choices):
    # A config file is parsed with parse_dict, which skips argparse's `choices`: parse_recipe_args checks them.
    config = tmp_path / "bad.yaml"
    config.write_text(f"{name}: {value}\n")
    message = f"{name}='{value}' is not a choice: pass --{name} with one of {choices} (or set it so in {config})."
    with pytest.raises(ValueError, match=re.escape(message)):
        recipe.parse_recipe_args(TYPES, recipe.DEFAULTS, [str(config)])
