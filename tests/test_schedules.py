"""Loss-weight schedules: the scales as maths, and the trainer's loss following them step by step."""

import pytest
from conftest import PadCollator, make_classification_dataset
from test_trainer import ALL_LOSSES, NO_DROPOUT, make_args, make_student, make_teacher, training_logs

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.schedules import group_scales


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("constant", 0.0, (1.0, 1.0)),
        ("constant", 0.9, (1.0, 1.0)),
        ("linear_decay", 0.0, (1.0, 1.0)),
        ("linear_decay", 0.25, (1.0, 0.75)),
        ("linear_decay", 1.0, (1.0, 0.0)),
        ("linear_decay", 1.5, (1.0, 0.0)),  # clamped
        ("two_phase", 0.0, (0.0, 1.0)),
        ("two_phase", 0.49, (0.0, 1.0)),
        ("two_phase", 0.5, (1.0, 0.0)),
        ("two_phase", 1.0, (1.0, 0.0)),
    ],
)
def test_group_scales(schedule, progress, expected):
    scales = group_scales(schedule, progress, split=0.5)
    assert (scales["prediction"], scales["layers"]) == expected


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match=r"loss_schedule must be one of \('constant', 'linear_decay', 'two_phase'\)"):
        group_scales("cosine", 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(loss_schedule="cosine"), r"loss_schedule must be one of"),
        (dict(two_phase_split=1.0), r"two_phase_split must be in \(0, 1\), got 1.0"),
        (dict(two_phase_split=0.0), r"two_phase_split must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_schedule_arguments_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def scheduled_trainer(tmp_path, schedule: str, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        model=make_student(**NO_DROPOUT),
        teacher_model=make_teacher(**NO_DROPOUT),
        args=make_args(tmp_path, loss_schedule=schedule, max_steps=4, **{**ALL_LOSSES, **overrides}),
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )


@pytest.mark.parametrize("schedule", ["linear_decay", "two_phase"])
def test_each_step_loss_is_the_scheduled_weighted_sum_of_its_components(tmp_path, schedule):
    trainer = scheduled_trainer(tmp_path, schedule)
    trainer.train()
    logs = training_logs(trainer)
    assert len(logs) == 4
    for step, entry in enumerate(logs):  # logged after step `step` ran at progress step / 4
        scales = group_scales(schedule, step / 4)
        # The log shows the scales at the logging step (progress (step + 1) / 4).
        logged = group_scales(schedule, (step + 1) / 4)
        assert (entry["prediction_loss_scale"], entry["layer_loss_scale"]) == (logged["prediction"], logged["layers"])
        expected = (
            ALL_LOSSES["hard_label_weight"] * scales["prediction"] * entry["hard_loss"]
            + ALL_LOSSES["logit_weight"] * scales["prediction"] * entry["logit_loss"]
            + ALL_LOSSES["hidden_weight"] * scales["layers"] * entry["hidden_loss"]
            + ALL_LOSSES["attention_weight"] * scales["layers"] * entry["attention_loss"]
        )
        # float32 sums of losses of ~1 (abs) and their logged means.
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if schedule == "two_phase":  # the first half trains the layers alone, the second half the prediction layer
        assert logs[0]["loss"] == pytest.approx(
            ALL_LOSSES["hidden_weight"] * logs[0]["hidden_loss"]
            + ALL_LOSSES["attention_weight"] * logs[0]["attention_loss"],
            rel=1e-5,
        )


def test_a_schedule_without_layer_terms_keeps_the_prediction_layer_on(tmp_path):
    trainer = scheduled_trainer(tmp_path, "two_phase", hidden_weight=0.0, attention_weight=0.0)
    assert trainer.scheduled_weights() == trainer.loss_weights == {"hard_loss": 0.3, "logit_loss": 0.7}
    trainer.train()
    for entry in training_logs(trainer):
        assert entry["loss"] == pytest.approx(0.3 * entry["hard_loss"] + 0.7 * entry["logit_loss"], rel=1e-5)


def test_the_constant_schedule_changes_nothing(tmp_path):
    constant = scheduled_trainer(tmp_path / "c", "constant")
    assert constant.scheduled_weights() == constant.loss_weights
    constant.train()
    assert "layer_loss_scale" not in training_logs(constant)[0]
