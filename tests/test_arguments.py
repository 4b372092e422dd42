"""DistillationArguments: defaults, validation with the user-facing error text, and command-line parsing."""

import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from nlpkd import DistillationArguments
from nlpkd.arguments import LOSS_WEIGHTS
from nlpkd.recipe_args import StudentArguments, TeacherArguments

DISTILLATION_FIELDS = (
    "temperature",
    "hard_label_weight",
    "logit_weight",
    "hidden_weight",
    "attention_weight",
    "logit_loss",
    "attention_loss",
    "layer_map",
)


@pytest.fixture
def make_args(tmp_path):
    def make(**overrides) -> DistillationArguments:
        return DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **overrides)

    return make


def test_defaults(make_args):
    args = make_args()
    assert isinstance(args, TrainingArguments)
    assert args.temperature == 2.0
    assert (args.hard_label_weight, args.logit_weight, args.hidden_weight, args.attention_weight) == (0.5, 0.5, 0, 0)
    assert args.logit_loss == "kl"
    assert args.attention_loss == "mse"
    assert args.layer_map is None
    assert args.needs_teacher


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_temperature_must_be_positive(make_args, temperature):
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {temperature}\."):
        make_args(temperature=temperature)


@pytest.mark.parametrize("name", LOSS_WEIGHTS)
def test_weights_must_not_be_negative(make_args, name):
    with pytest.raises(ValueError, match=rf"{name} must be >= 0, got -0\.1; set it to 0 to switch that loss off\."):
        make_args(**{name: -0.1})


def test_all_weights_zero_is_rejected(make_args):
    zeros = dict.fromkeys(LOSS_WEIGHTS, 0.0)
    with pytest.raises(ValueError, match=r"All loss weights are 0 \(hard_label_weight, logit_weight, hidden_weight, "):
        make_args(**zeros)


def test_one_weight_is_enough(make_args):
    args = make_args(hard_label_weight=0.0, logit_weight=0.0, attention_weight=1.0)
    assert args.needs_teacher
    hard_only = make_args(hard_label_weight=1.0, logit_weight=0.0)
    assert not hard_only.needs_teacher


def test_bad_logit_loss(make_args):
    with pytest.raises(ValueError, match=r"logit_loss must be one of \('kl', 'mse', 'soft_ce'\), got 'js'\."):
        make_args(logit_loss="js")


def test_bad_attention_loss(make_args):
    with pytest.raises(ValueError, match=r"attention_loss must be one of \('mse', 'kl'\), got 'cosine'\."):
        make_args(attention_loss="cosine")


@pytest.mark.parametrize("layer_map", [[], [0, 2], [2, -1], [1.5, 2], ["2"]])
def test_bad_layer_map_entries(make_args, layer_map):
    with pytest.raises(ValueError, match=r"layer_map must be a non-empty list of teacher layer numbers >= 1 \(0 is"):
        make_args(layer_map=layer_map)


def test_valid_choices_are_accepted(make_args):
    args = make_args(logit_loss="soft_ce", attention_loss="kl", layer_map=[1, 3], temperature=0.5)
    assert (args.logit_loss, args.attention_loss, args.layer_map, args.temperature) == ("soft_ce", "kl", [1, 3], 0.5)


def test_command_line_parsing(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--report_to",
            "none",
            "--use_cpu",
            "--layer_map",
            "2",
            "4",
            "--temperature",
            "3",
            "--logit_loss",
            "soft_ce",
            "--hidden_weight",
            "0.25",
        ]
    )
    assert isinstance(args, DistillationArguments)
    assert args.layer_map == [2, 4]
    assert args.temperature == 3.0
    assert args.logit_loss == "soft_ce"
    assert args.hidden_weight == 0.25
    assert args.attention_loss == "mse"


def test_command_line_rejects_unknown_choice(tmp_path, capsys):
    parser = HfArgumentParser(DistillationArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--logit_loss", "js"])
    assert "invalid choice: 'js'" in capsys.readouterr().err


def test_command_line_validation_runs(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    with pytest.raises(ValueError, match=r"temperature must be > 0, got -2\.0\."):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--temperature", "-2"])


def test_every_distillation_field_has_help():
    fields = {f.name: f for f in dataclasses.fields(DistillationArguments)}
    for name in DISTILLATION_FIELDS:
        help_text = fields[name].metadata.get("help", "")
        assert len(help_text) > 20, f"{name} has no useful --help text: {help_text!r}"
    help_output = HfArgumentParser(DistillationArguments).format_help()
    for name in DISTILLATION_FIELDS:
        assert f"--{name}" in help_output
    assert "{kl,mse,soft_ce}" in help_output
    assert "{mse,kl}" in help_output


def test_every_distillation_field_is_documented_in_the_docstring():
    for name in DISTILLATION_FIELDS:
        assert f"{name} (`" in DistillationArguments.__doc__


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", float("inf")), ("logit_weight", float("inf")), ("learning_rate", float("nan"))],
)
def test_float_fields_must_be_finite(make_args, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number, got {value}: give a finite value\."):
        make_args(**{name: value})


def test_teacher_cache_dir_that_is_a_file_is_refused(make_args, tmp_path):
    a_file = tmp_path / "logits.bin"
    a_file.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match=r"teacher_logits_cache_dir='.*logits\.bin' is a file, but the teacher"):
        make_args(teacher_logits_cache_dir=str(a_file))
    assert a_file.read_bytes() == b"not a folder"  # nothing lost


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("per_device_train_batch_size", 0, r"per_device_train_batch_size must be >= 1, got 0\."),
        ("gradient_accumulation_steps", 0, r"gradient_accumulation_steps must be >= 1, got 0\."),
        ("learning_rate", -1.0, r"learning_rate must be >= 0, got -1\.0\."),
    ],
)
def test_training_basics_fail_before_training(make_args, name, value, message):
    with pytest.raises(ValueError, match=message):
        make_args(**{name: value})


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("kept")
    with pytest.raises(ValueError, match=r"output_dir='.*results\.txt' is a file: give a folder"):
        DistillationArguments(output_dir=str(a_file), report_to="none", use_cpu=True)
    assert a_file.read_text() == "kept"


def test_recipe_model_arguments_fail_early():
    with pytest.raises(ValueError, match=r"teacher_model_name_or_path='/nonexistent/teacher' is not a folder: give "):
        TeacherArguments(teacher_model_name_or_path="/nonexistent/teacher")
    with pytest.raises(ValueError, match=r"student_model_name_or_path='\./no/such/student' is not a folder"):
        StudentArguments(student_model_name_or_path="./no/such/student")
    with pytest.raises(ValueError, match=r"student_num_layers must be >= 1, got 0\."):
        StudentArguments(student_num_layers=0)
    assert TeacherArguments(teacher_model_name_or_path="org/name").teacher_path == "org/name"  # a Hub id passes
