"""The recipes' shared argument checks: a length argument against the position limits of the models reading it, and
the sample limits."""

import importlib
from types import SimpleNamespace

import pytest
from transformers import BertConfig, EncoderDecoderConfig, GPT2Config, T5Config, XLNetConfig

from nlpkd.recipe_args import (
    StudentArguments,
    TeacherArguments,
    check_length_limit,
    check_sample_limits,
    position_limit,
)


def saved_config(config, folder) -> str:
    config.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        (BertConfig(max_position_embeddings=16), 16),
        (GPT2Config(n_positions=24), 24),  # GPT-2 names it n_positions
        (
            EncoderDecoderConfig.from_encoder_decoder_configs(
                BertConfig(max_position_embeddings=16), BertConfig(max_position_embeddings=32)
            ),
            16,
        ),
        (T5Config(), None),  # relative positions: no limit
        (XLNetConfig(), None),  # relative positions, max_position_embeddings reads -1
    ],
)
def test_position_limit(config, limit):
    assert position_limit(config) == limit


def test_a_length_within_the_teachers_limit_passes_and_one_above_is_refused(tmp_path):
    teacher_args = TeacherArguments(
        teacher_model_name_or_path=saved_config(BertConfig(max_position_embeddings=16), tmp_path)
    )
    check_length_limit("max_seq_length", 16, teacher_args, StudentArguments())
    with pytest.raises(ValueError) as raised:
        check_length_limit("max_seq_length", 17, teacher_args, StudentArguments())
    assert str(raised.value) == (
        "max_seq_length=17 exceeds the teacher's max_position_embeddings=16, the most tokens it can read: pass "
        "--max_seq_length 16 or less."
    )


def test_a_loaded_student_with_a_smaller_limit_sets_it(tmp_path):
    teacher = saved_config(BertConfig(max_position_embeddings=16), tmp_path / "teacher")
    student = saved_config(BertConfig(max_position_embeddings=8), tmp_path / "student")
    teacher_args = TeacherArguments(teacher_model_name_or_path=teacher)
    student_args = StudentArguments(student_model_name_or_path=student)
    check_length_limit("block_size", 8, teacher_args, student_args)
    with pytest.raises(
        ValueError, match=r"block_size=9 exceeds the student's max_position_embeddings=8.*--block_size 8"
    ):
        check_length_limit("block_size", 9, teacher_args, student_args)


def test_a_model_with_relative_positions_sets_no_limit(tmp_path):
    teacher_args = TeacherArguments(teacher_model_name_or_path=saved_config(T5Config(), tmp_path / "teacher"))
    check_length_limit("max_source_length", 100_000, teacher_args, StudentArguments())  # no limit to exceed
    student = saved_config(BertConfig(max_position_embeddings=8), tmp_path / "student")
    with pytest.raises(ValueError, match=r"max_source_length=9 exceeds the student's max_position_embeddings=8"):
        check_length_limit("max_source_length", 9, teacher_args, StudentArguments(student_model_name_or_path=student))


@pytest.mark.parametrize("recipe", ["text_classification", "language_modeling", "translation"])
def test_every_recipe_refuses_a_sample_limit_of_zero_before_any_stage(recipe, tmp_path):
    # A limit of 0 left an empty split that failed inside datasets ("Invalid key: 0 is out of bounds for size 0"),
    # in the translation recipe only after its teacher stage.
    module = importlib.import_module(f"nlpkd.recipes.{recipe}")
    with pytest.raises(ValueError, match=r"max_train_samples must be >= 1, got 0: leave it unset to use every row\."):
        module.main(["--max_train_samples", "0", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_sample_limits_of_one_and_none_pass():
    check_sample_limits(SimpleNamespace(max_train_samples=1, max_eval_samples=None))
    with pytest.raises(ValueError, match=r"max_eval_samples must be >= 1, got -5: "):
        check_sample_limits(SimpleNamespace(max_train_samples=None, max_eval_samples=-5))
