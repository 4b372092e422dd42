"""Loss-weight and temperature schedules: the scales as maths, and the trainer's loss following them step by step."""

import pytest
import torch
from conftest import PadCollator, make_classification_dataset
from test_trainer import ALL_LOSSES, NO_DROPOUT, make_args, make_student, make_teacher, training_logs

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.losses import logit_kd_loss
from nlpkd.schedules import group_scales, temperature_at


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
        (dict(temperature_schedule="cosine"), r"temperature_schedule must be one of \('constant', 'linear'\)"),
        (dict(final_temperature=0.0), r"final_temperature must be > 0, got 0.0"),
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


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("constant", 0.0, 4.0),
        ("constant", 1.0, 4.0),
        ("linear", 0.0, 4.0),
        ("linear", 0.5, 2.5),
        ("linear", 1.0, 1.0),
        ("linear", 2.0, 1.0),  # clamped
    ],
)
def test_temperature_at(schedule, progress, expected):
    assert temperature_at(schedule, 4.0, 1.0, progress) == expected


def test_logit_kd_follows_the_scheduled_temperature_and_logs_it(tmp_path):
    logits_only = dict(hidden_weight=0.0, attention_weight=0.0, temperature=4.0, final_temperature=1.0)
    trainer = scheduled_trainer(tmp_path, "constant", temperature_schedule="linear", **logits_only)
    batch = PadCollator()([make_classification_dataset(num_rows=8, seed=3)[i] for i in range(8)])
    features = {name: batch[name] for name in ("input_ids", "attention_mask")}
    trainer.model.eval()
    with torch.no_grad():
        student, teacher = trainer.model(**features).logits, trainer.teacher(**features).logits
    for step, temperature in ((0, 4.0), (2, 2.5), (4, 1.0)):
        trainer.state.global_step, trainer.state.max_steps = step, 4
        assert trainer.current_temperature() == temperature
        expected = logit_kd_loss(student, teacher, temperature).item()
        # float32 KL of ~0.1-1 over 8 rows: relative 1e-5 with an absolute floor.
        assert trainer.loss_components(batch)["logit_loss"].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The terms themselves keep the starting temperature; only each step's copy moves.
    assert [term.temperature for term in trainer.terms if hasattr(term, "temperature")] == [4.0]
    trainer.state.global_step = 0
    trainer.train()
    logs = training_logs(trainer)
    assert [entry["temperature"] for entry in logs] == [
        temperature_at("linear", 4.0, 1.0, (s + 1) / 4) for s in range(4)
    ]
