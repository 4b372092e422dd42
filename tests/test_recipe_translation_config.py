"""The shipped translation config spells out exactly the recipe's default run."""

import dataclasses
from pathlib import Path

from nlpkd.recipes import translation as recipe

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "configs"


def test_shipped_config_spells_out_the_default_run():
    types = (
        recipe.TranslationDataArguments,
        recipe.TeacherArguments,
        recipe.StudentArguments,
        recipe.Seq2SeqDistillationArguments,
    )
    config = str(CONFIGS / "translation.yaml")
    from_config = recipe.parse_recipe_args(types, recipe.DEFAULTS, [config])
    from_defaults = recipe.parse_recipe_args(types, recipe.DEFAULTS, [])
    for parsed_config, parsed_default in zip(from_config, from_defaults, strict=True):
        fields = [f.name for f in dataclasses.fields(parsed_config)]
        assert {name: getattr(parsed_config, name) for name in fields} == {
            name: getattr(parsed_default, name) for name in fields
        }
    assert from_config[3].generation_num_beams == 4
    assert from_config[2].student_decoder_layers == 1
