"""Searching temperature and loss weights with `Trainer.hyperparameter_search`, and component losses in TensorBoard."""

import json
import math
import sys

import pytest
import torch
from conftest import PadCollator, make_classification_dataset
from test_recipe_text_classification import recipe_flags, reviews_csv, tiny_teacher_dir  # noqa: F401
from test_trainer import NO_DROPOUT, clone_state, make_args, make_student, make_teacher
from transformers.trainer_utils import HPSearchBackend

import nlpkd.terms
from nlpkd import DistillationTrainer
from nlpkd.recipes import text_classification
from nlpkd.search import SearchArguments, search_distillation, suggest_settings

optuna = pytest.importorskip("optuna")
COMPONENTS = ("hard_loss", "logit_loss", "hidden_loss", "attention_loss")


def step_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def run_trial(trainer, params: dict) -> None:
    """What `hyperparameter_search` does for one optuna trial, with fixed params."""
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda trial: suggest_settings(trial, layer_weights=True)
    trainer.train(trial=optuna.trial.FixedTrial(params))


@pytest.fixture
def temperatures(monkeypatch) -> list[float]:
    """The temperature of every logit KD loss the trainer computes."""
    seen, logit_kd_loss = [], nlpkd.terms.logit_kd_loss

    def spy(student_logits, teacher_logits, temperature, *args, **kwargs):
        seen.append(temperature)
        return logit_kd_loss(student_logits, teacher_logits, temperature, *args, **kwargs)

    monkeypatch.setattr(nlpkd.terms, "logit_kd_loss", spy)
    return seen


def test_trial_settings_reach_the_loss_and_switch_terms(tmp_path, temperatures):
    initial_states = []

    def student_init():
        student = make_student(**NO_DROPOUT)
        initial_states.append(clone_state(student))
        return student

    # One batch of all rows: the data order cannot differ between the runs compared below.
    whole_batch = dict(max_steps=2, per_device_train_batch_size=32)
    args = make_args(tmp_path, **whole_batch, temperature=2.0, hidden_weight=0.0, attention_weight=0.0)
    teacher = make_teacher(**NO_DROPOUT)
    trainer = DistillationTrainer(
        model_init=student_init,
        teacher_model=teacher,
        args=args,
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )
    assert trainer.hidden_terms == [] and trainer.attention_terms == []

    # Trial 1 switches the hidden-state loss on.
    temperatures.clear()
    run_trial(trainer, {"alpha": 0.25, "temperature": 4.0, "hidden_weight": 1.0, "attention_weight": 0.0})
    assert set(temperatures) == {4.0}
    assert trainer.loss_weights == {"hard_loss": 0.75, "logit_loss": 0.25, "hidden_loss": 1.0}
    assert trainer.model.projections is not None
    trial_logs = step_logs(trainer)
    for entry in trial_logs:
        assert "attention_loss" not in entry
        expected = 0.75 * entry["hard_loss"] + 0.25 * entry["logit_loss"] + 1.0 * entry["hidden_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5)

    # The same settings given up front train the same student the same way: the trial's settings are the ones used.
    fixed_args = make_args(
        tmp_path / "fixed",
        **whole_batch,
        temperature=4.0,
        hard_label_weight=0.75,
        logit_weight=0.25,
        hidden_weight=1.0,
    )
    fixed = DistillationTrainer(
        model=make_student(**NO_DROPOUT),  # the projections draw from the random state the student leaves
        teacher_model=teacher,
        args=fixed_args,
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )
    fixed.train()
    for trial_entry, fixed_entry in zip(trial_logs, step_logs(fixed), strict=True):
        for name in ("loss", "hard_loss", "logit_loss", "hidden_loss"):
            assert trial_entry[name] == pytest.approx(fixed_entry[name], rel=1e-4, abs=1e-6), name

    # Trial 2 drops the labels and the hidden states, and switches the attention loss on.
    temperatures.clear()
    run_trial(trainer, {"alpha": 1.0, "temperature": 1.5, "hidden_weight": 0.0, "attention_weight": 1.0})
    assert set(temperatures) == {1.5}
    # A loss of weight 0 is no term at all: hard_loss is off.
    assert trainer.loss_weights == {"logit_loss": 1.0, "attention_loss": 1.0}
    assert trainer.model.projections is None
    for entry in step_logs(trainer):
        assert {"logit_loss", "attention_loss"} <= set(entry) and not {"hard_loss", "hidden_loss"} & set(entry)

    # Each run started from a fresh student with the same initialisation (the first one is made at init).
    assert len(initial_states) == 3
    for state in initial_states[1:]:
        for name, value in initial_states[0].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0)


def test_model_and_model_init_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="takes `model` or `model_init`, not both"):
        DistillationTrainer(
            model=make_student(), model_init=make_student, teacher_model=make_teacher(), args=make_args(tmp_path)
        )


def test_search_runs_each_trial_and_reports_the_best(tmp_path):
    eval_dataset = make_classification_dataset(num_rows=12, seed=1)
    search = search_distillation(
        lambda: make_student(),
        make_teacher(),
        make_args(tmp_path, max_steps=2),
        SearchArguments(search_trials=2, search_layer_weights=True),
        train_dataset=make_classification_dataset(),
        eval_dataset=eval_dataset,
        data_collator=PadCollator(),
    )
    trials = search["trials"]
    assert [trial["trial"] for trial in trials] == [0, 1]
    assert all(trial["state"] == "COMPLETE" for trial in trials)
    assert trials[0]["temperature"] != trials[1]["temperature"]
    assert search["metric"] == "eval_loss" and search["direction"] == "minimize"
    best = min(trials, key=lambda trial: trial["score"])
    assert search["best_trial"] == best["trial"]
    assert search["best_score"] == best["score"]
    assert search["best_settings"] == {name: best[name] for name in search["best_settings"]}
    assert set(search["best_settings"]) == {
        "temperature",
        "hard_label_weight",
        "logit_weight",
        "hidden_weight",
        "attention_weight",
    }
    assert not (tmp_path / "search").exists() or not list((tmp_path / "search").glob("**/*.safetensors"))


def test_recipe_searches_then_distils_with_the_best_setting(tiny_teacher_dir, reviews_csv, tmp_path):  # noqa: F811
    flags = recipe_flags(
        tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true", "--search_trials", "2",
        "--search_layer_weights", "true",
    )  # fmt: skip
    results = text_classification.main(flags)

    search = results["search"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["search"] == search
    assert search["metric"] == "eval_accuracy" and search["direction"] == "maximize"
    first, second = search["trials"]
    settings = set(search["best_settings"])
    assert {name: first[name] for name in settings} != {name: second[name] for name in settings}
    best = max(search["trials"], key=lambda trial: trial["score"])  # the first of equal scores, as optuna's
    assert search["best_trial"] == best["trial"] and search["best_score"] == best["score"]
    # The final student was distilled with the best setting, and results.json says so.
    for name, value in search["best_settings"].items():
        assert results["distillation"][name] == value, name
    # The student's model card shows the search: the best trial and every trial's settings.
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Temperature and weight search" in card
    assert f"trial {search['best_trial']} of 2" in card
    for trial in search["trials"]:
        assert f"| {trial['trial']} | {trial['temperature']:.4g} |" in card


@pytest.mark.parametrize(
    "flags, error, match",
    [
        (["--search_trials", "0"], ValueError, r"search_trials must be >= 1 .* got 0; pass --search_trials 1 or more"),
        (["--search_layer_weights", "true"], ValueError, "search_layer_weights=True needs search_trials"),
    ],
)
def test_recipe_rejects_bad_search_flags_before_training(tiny_teacher_dir, reviews_csv, tmp_path, flags, error, match):  # noqa: F811
    with pytest.raises(error, match=match):
        text_classification.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, *flags))
    assert not (tmp_path / "teachers").exists()


def test_search_without_optuna_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install optuna"):
        SearchArguments(search_trials=2)


def test_component_losses_reach_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tensorboard"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(log_dir))  # transformers 5 has no `logging_dir` argument
    trainer = DistillationTrainer(
        model=make_student(),
        teacher_model=make_teacher(),
        args=make_args(
            tmp_path / "out", max_steps=3, report_to=["tensorboard"], hidden_weight=1.0, attention_weight=1.0
        ),
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )
    trainer.train()

    events = EventAccumulator(str(log_dir))
    events.Reload()
    logged = step_logs(trainer)
    assert len(logged) == 3
    for name in ("loss", *COMPONENTS):
        scalars = events.Scalars(f"train/{name}")
        assert [event.step for event in scalars] == [entry["step"] for entry in logged], name
        for event, entry in zip(scalars, logged, strict=True):
            assert math.isfinite(event.value)
            assert event.value == pytest.approx(entry[name], rel=1e-6), name  # stored as float32
