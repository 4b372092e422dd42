"""DistillationTrainer end to end on tiny config-built BERTs: a few steps each, on CPU."""

import logging
import os

import pytest
import torch
from conftest import (
    PadCollator,
    crash_while_saving_at,
    make_classification_dataset,
    tiny_bert_config,
    tiny_marian_config,
)
from safetensors import safe_open
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    ElectraConfig,
    ElectraForSequenceClassification,
    MarianMTModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.distillation_model import PROJECTIONS_NAME
from nlpkd.losses import logit_kd_loss

ALL_LOSSES = dict(hard_label_weight=0.3, logit_weight=0.7, hidden_weight=2.0, attention_weight=0.1)
# Plain SGD at a constant rate: after two steps the weights show any difference in the gradients.
EXACT_STEPS = dict(max_steps=2, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant")
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STUDENT_SHAPE = dict(hidden_size=16, num_hidden_layers=2, intermediate_size=20)


def make_args(output_dir, **overrides) -> DistillationArguments:
    settings = dict(
        output_dir=str(output_dir),
        report_to="none",
        use_cpu=True,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return DistillationArguments(**settings)


def make_trainer(
    output_dir, teacher, student, train_dataset=None, collator=None, trainer_kwargs=None, **overrides
) -> DistillationTrainer:
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(output_dir, **overrides),
        train_dataset=train_dataset if train_dataset is not None else make_classification_dataset(),
        data_collator=collator or PadCollator(),
        **(trainer_kwargs or {}),
    )


def make_student(seed: int = 1, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**{**STUDENT_SHAPE, **overrides}))


def make_teacher(seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**overrides)).eval()


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_states_equal(actual: dict, expected: dict, atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def spy_on_forward(model: torch.nn.Module) -> list[dict]:
    """Record the keyword arguments of every forward call of `model`."""
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def training_logs(trainer: DistillationTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


# ---- all four losses ----


def test_all_losses_train_the_student_and_projections_and_leave_the_teacher_alone(tmp_path, teacher, student):
    teacher.train()  # the trainer must put it in eval mode itself
    teacher_before = clone_state(teacher)
    student_before = clone_state(student)
    trainer = make_trainer(tmp_path, teacher, student, **ALL_LOSSES)
    projections = trainer.model.projections
    assert len(projections) == 3  # embeddings + 2 layers, 16 -> 32 wide
    assert all(isinstance(p, torch.nn.Linear) and p.weight.shape == (32, 16) for p in projections)
    projections_before = clone_state(projections)

    trainer.train()

    assert_states_equal(clone_state(teacher), teacher_before)
    assert not teacher.training and not any(module.training for module in teacher.modules())
    assert not any(param.requires_grad for param in teacher.parameters())
    optimized = {id(param) for group in trainer.optimizer.param_groups for param in group["params"]}
    assert not optimized & {id(param) for param in teacher.parameters()}
    assert {id(param) for param in projections.parameters()} <= optimized
    assert {id(param) for param in student.parameters()} <= optimized

    for name, value in clone_state(student).items():
        if name.endswith("weight") and "LayerNorm" not in name:
            assert not torch.equal(value, student_before[name]), f"student {name} did not change"
    for name, value in clone_state(projections).items():
        assert not torch.equal(value, projections_before[name]), f"projection {name} did not change"

    logs = training_logs(trainer)
    assert len(logs) == 6
    for entry in logs:
        components = {name: entry[name] for name in ("hard_loss", "logit_loss", "hidden_loss", "attention_loss")}
        assert all(value > 0 for value in components.values()), entry
        weighted = (
            0.3 * components["hard_loss"]
            + 0.7 * components["logit_loss"]
            + 2.0 * components["hidden_loss"]
            + 0.1 * components["attention_loss"]
        )
        assert entry["loss"] == pytest.approx(weighted, rel=1e-5)
    assert logs[-1]["hidden_loss"] < logs[0]["hidden_loss"]


def test_components_are_averaged_over_the_logging_interval(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, logging_steps=3)
    trainer.train()
    logs = training_logs(trainer)
    assert len(logs) == 2
    for entry in logs:
        assert set(entry) >= {"loss", "hard_loss", "logit_loss"}
        assert "hidden_loss" not in entry and "attention_loss" not in entry
        assert entry["loss"] == pytest.approx(0.5 * entry["hard_loss"] + 0.5 * entry["logit_loss"], rel=1e-5)


# ---- a zero weight computes nothing ----


def test_zero_hidden_weight_asks_the_teacher_for_no_hidden_states(tmp_path, teacher, student):
    teacher_calls = spy_on_forward(teacher)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=2, attention_weight=1.0)
    assert trainer.model.projections is None
    trainer.train()
    assert len(teacher_calls) == 2
    assert all(call.get("output_hidden_states") is False for call in teacher_calls)
    assert all("labels" not in call for call in teacher_calls)
    for entry in training_logs(trainer):
        assert "hidden_loss" not in entry
        assert {"hard_loss", "logit_loss", "attention_loss"} <= set(entry)


def test_hidden_weight_asks_the_teacher_for_hidden_states(tmp_path, teacher, student):
    teacher_calls = spy_on_forward(teacher)
    make_trainer(tmp_path, teacher, student, max_steps=1, hidden_weight=1.0).train()
    assert [call.get("output_hidden_states") for call in teacher_calls] == [True]


def test_without_distillation_weights_the_teacher_never_runs(tmp_path, teacher, student):
    teacher_calls = spy_on_forward(teacher)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=2, hard_label_weight=1.0, logit_weight=0.0)
    assert trainer.teacher is None
    trainer.train()
    assert teacher_calls == []
    for entry in training_logs(trainer):
        assert {"hard_loss"} == {name for name in entry if name.endswith("_loss")}
        assert entry["loss"] == pytest.approx(entry["hard_loss"], rel=1e-5)


def test_without_hard_label_weight_the_student_gets_no_labels(tmp_path, teacher, student):
    student_calls = spy_on_forward(student)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=1, hard_label_weight=0.0, logit_weight=1.0)
    trainer.train()
    assert len(student_calls) == 1 and "labels" not in student_calls[0]
    (entry,) = training_logs(trainer)
    assert "hard_loss" not in entry and entry["loss"] == pytest.approx(entry["logit_loss"], rel=1e-5)


# ---- saving and resuming ----


def test_saved_student_has_no_projections_and_checkpoints_do(tmp_path, teacher, student):
    trainer = make_trainer(
        tmp_path / "run", teacher, student, max_steps=3, save_strategy="steps", save_steps=3, **ALL_LOSSES
    )
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (checkpoint / PROJECTIONS_NAME).is_file()
    with safe_open(str(checkpoint / PROJECTIONS_NAME), framework="pt") as projections_file:
        saved_projections = {key: projections_file.get_tensor(key) for key in projections_file.keys()}
    assert sorted(saved_projections) == [f"projections.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    for key, value in saved_projections.items():
        torch.testing.assert_close(value, trainer.model.state_dict()[key], rtol=0, atol=0)
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as model_file:
        checkpoint_keys = list(model_file.keys())
    assert not any("projections" in key or key.startswith("student.") for key in checkpoint_keys)

    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert not (final / PROJECTIONS_NAME).exists()
    assert not any("projection" in name for name in os.listdir(final))
    with safe_open(str(final / "model.safetensors"), framework="pt") as model_file:
        saved_keys = list(model_file.keys())
    assert saved_keys and not any("projections" in key or key.startswith("student.") for key in saved_keys)

    reloaded = BertForSequenceClassification.from_pretrained(str(final))
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.hidden_size == 16
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
    reloaded_state, trained_state = reloaded.state_dict(), student.state_dict()
    assert reloaded_state.keys() == trained_state.keys()
    for key, value in trained_state.items():
        torch.testing.assert_close(reloaded_state[key], value, rtol=0, atol=0)


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trained_weights(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    return clone_state(trainer.model)  # student and projections


def test_resume_restores_student_projections_and_optimizer(tmp_path, teacher):
    # With dropout on: the checkpoint's RNG state makes the resumed steps draw the same dropout masks.
    config = {}
    resume_args = dict(max_steps=8, save_strategy="steps", save_steps=4, **ALL_LOSSES)

    uninterrupted = make_trainer(tmp_path / "a", teacher, make_student(seed=1, **config), **resume_args)
    uninterrupted.train()

    stopped = make_trainer(tmp_path / "b", teacher, make_student(seed=1, **config), **resume_args)
    stopped.add_callback(StopAt(4))
    stopped.train()
    assert stopped.state.global_step == 4
    checkpoint = tmp_path / "b" / "checkpoint-4"
    assert (checkpoint / PROJECTIONS_NAME).is_file()

    resumed = make_trainer(tmp_path / "b", teacher, make_student(seed=7, **config), **resume_args)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 8
    assert_states_equal(_trained_weights(resumed), _trained_weights(uninterrupted), atol=1e-6)
    resumed_logs, uninterrupted_logs = training_logs(resumed), training_logs(uninterrupted)
    # The first four entries come back from the checkpoint's trainer_state.json; the last four were trained again.
    assert (
        [entry["step"] for entry in resumed_logs]
        == [entry["step"] for entry in uninterrupted_logs]
        == list(range(1, 9))
    )
    for resumed_entry, entry in zip(resumed_logs, uninterrupted_logs, strict=True):
        for name in ("loss", "hard_loss", "logit_loss", "hidden_loss", "attention_loss"):
            assert resumed_entry[name] == pytest.approx(entry[name], rel=1e-5, abs=1e-7)


def test_resume_without_projections_file_fails_clearly(tmp_path, teacher, student):
    trainer = make_trainer(
        tmp_path / "run", teacher, student, max_steps=2, save_strategy="steps", save_steps=2, hidden_weight=1.0
    )
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    (checkpoint / PROJECTIONS_NAME).unlink()
    resumed = make_trainer(tmp_path / "run", teacher, make_student(seed=3), max_steps=4, hidden_weight=1.0)
    with pytest.raises(ValueError, match=rf"checkpoint-2 has no {PROJECTIONS_NAME}: it was not written by a "):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def _checkpoint_after_two_steps(tmp_path, teacher, student, **losses):
    make_trainer(
        tmp_path / "run", teacher, student, max_steps=2, save_strategy="steps", save_steps=2, **losses
    ).train()
    return tmp_path / "run" / "checkpoint-2"


def test_resume_from_a_checkpoint_of_another_student_shape_fails_clearly(tmp_path, teacher, student):
    checkpoint = _checkpoint_after_two_steps(tmp_path, teacher, student)
    other_shape = make_trainer(tmp_path / "run", teacher, make_student(num_hidden_layers=3), max_steps=4)
    with pytest.raises(
        ValueError,
        match=r"checkpoint-2' holds another student than this run's: num_hidden_layers 2 \(checkpoint\) vs 3 \(this "
        r"run\)\. Resume with the student settings of the run that wrote it",
    ):
        other_shape.train(resume_from_checkpoint=str(checkpoint))


def test_resume_with_other_projections_fails_clearly(tmp_path, teacher, student):
    checkpoint = _checkpoint_after_two_steps(tmp_path, teacher, student, hidden_weight=1.0)
    without_hidden_loss = make_trainer(tmp_path / "run", teacher, make_student(seed=3), max_steps=4)
    with pytest.raises(
        ValueError,
        match=rf"{PROJECTIONS_NAME} holds hidden-state projections 3 × \[32\], 3 × \[32, 16\], but this run has none: "
        "the checkpoint was trained with other loss settings",
    ):
        without_hidden_loss.train(resume_from_checkpoint=str(checkpoint))


def _cut_while_saving_step_4(run, teacher, monkeypatch) -> None:
    crashed = make_trainer(run, teacher, make_student(), max_steps=6, save_strategy="steps", save_steps=2)
    crash_while_saving_at(4, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    monkeypatch.undo()


def test_resume_true_skips_a_checkpoint_cut_short_while_saving(tmp_path, teacher, monkeypatch, caplog):
    run = tmp_path / "run"
    _cut_while_saving_step_4(run, teacher, monkeypatch)
    assert (run / "checkpoint-4" / "model.safetensors").is_file() and not (
        run / "checkpoint-4" / "trainer_state.json"
    ).exists()
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()  # the previous complete checkpoint is kept

    resumed = make_trainer(run, teacher, make_student(seed=5), max_steps=6, save_strategy="steps", save_steps=2)
    with caplog.at_level(logging.WARNING, logger="nlpkd.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    assert "Skipping the incomplete checkpoint" in caplog.text and "checkpoint-4 (no trainer_state.json" in caplog.text
    assert resumed.state.global_step == 6
    assert [entry["step"] for entry in training_logs(resumed)] == list(range(1, 7))  # steps 1-2 from checkpoint-2


def test_resume_from_an_incomplete_checkpoint_path_names_the_complete_one(tmp_path, teacher, monkeypatch):
    run = tmp_path / "run"
    _cut_while_saving_step_4(run, teacher, monkeypatch)
    resumed = make_trainer(run, teacher, make_student(seed=5), max_steps=6)
    with pytest.raises(
        ValueError,
        match=r"checkpoint-4' is incomplete \(no trainer_state\.json: the run stopped while writing it\): resume from "
        r".*checkpoint-2, the last complete one\.",
    ):
        resumed.train(resume_from_checkpoint=str(run / "checkpoint-4"))


def test_resume_without_trainable_projections_needs_no_projections_file(tmp_path, teacher, student):
    # Equal widths give identity projections: nothing to save, nothing to restore.
    equal_width = make_student(seed=1, hidden_size=32, intermediate_size=37)
    trainer = make_trainer(
        tmp_path / "run", teacher, equal_width, max_steps=2, save_strategy="steps", save_steps=2, hidden_weight=1.0
    )
    assert all(isinstance(p, torch.nn.Identity) for p in trainer.model.projections)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert not (checkpoint / PROJECTIONS_NAME).exists()
    resumed = make_trainer(
        tmp_path / "run",
        teacher,
        make_student(seed=3, hidden_size=32, intermediate_size=37),
        max_steps=3,
        hidden_weight=1.0,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3


def _read_safetensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as tensors:
        return {key: tensors.get_tensor(key) for key in tensors.keys()}


def test_load_best_model_at_end_restores_student_and_projections(tmp_path, teacher, student):
    scores = iter([1.0, 0.0])  # the first evaluation, at step 2, is the best

    def compute_metrics(predictions):
        return {"marker": next(scores)}

    trainer = make_trainer(
        tmp_path / "run",
        teacher,
        student,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="marker",
        greater_is_better=True,
        hidden_weight=1.0,
        trainer_kwargs=dict(
            eval_dataset=make_classification_dataset(num_rows=4, seed=3), compute_metrics=compute_metrics
        ),
    )
    trainer.train()
    best, last = tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4"
    assert trainer.state.best_model_checkpoint == str(best)
    assert_states_equal(clone_state(student), _read_safetensors(best / "model.safetensors"))
    assert not torch.equal(
        student.classifier.weight, _read_safetensors(last / "model.safetensors")["classifier.weight"]
    )
    projections = {f"projections.{key}": value for key, value in clone_state(trainer.model.projections).items()}
    assert_states_equal(projections, _read_safetensors(best / PROJECTIONS_NAME))


# ---- padding ----


@pytest.mark.parametrize(
    ("attention_loss", "student_heads"), [("mse", 4), ("kl", 4), ("kl", 2)], ids=["mse", "kl", "kl_fewer_heads"]
)
def test_losses_do_not_change_with_extra_padding(tmp_path, attention_loss, student_heads):
    # A wider initialisation than BERT's 0.02 gives peaked attention and clearly non-zero losses to compare.
    sharp = dict(initializer_range=0.2, **NO_DROPOUT)
    teacher = make_teacher(**sharp)
    student = make_student(num_attention_heads=student_heads, **sharp)
    trainer = make_trainer(tmp_path, teacher, student, attention_loss=attention_loss, **ALL_LOSSES)
    rows = [make_classification_dataset(num_rows=6, seed=4)[i] for i in range(6)]
    assert len({len(row["input_ids"]) for row in rows}) > 1  # ragged, so the tight batch has padding too
    trainer.model.train()

    def components(collator: PadCollator) -> dict[str, float]:
        batch = collator(rows)
        loss = trainer.compute_loss(trainer.model, batch)
        values = {name: value.item() for name, value in trainer.loss_components(batch).items()}
        return {"loss": loss.item(), **values}

    tight, padded = components(PadCollator()), components(PadCollator(extra_padding=5))
    assert set(tight) == {"loss", "hard_loss", "logit_loss", "hidden_loss", "attention_loss"}
    for name, value in tight.items():
        assert value > 0.05, name
        # Other matmul shapes: float32 rounding of loss terms of ~1 (abs), whatever a component's size.
        assert padded[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("model_class", [BertForTokenClassification, BertForMaskedLM])
def test_token_level_logit_loss_leaves_out_padding(tmp_path, model_class):
    sharp = dict(initializer_range=0.2, **NO_DROPOUT)
    torch.manual_seed(0)
    teacher = model_class(tiny_bert_config(**sharp)).eval()
    torch.manual_seed(1)
    student = model_class(tiny_bert_config(**STUDENT_SHAPE, **sharp))
    trainer = make_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0, logit_loss="kl")
    rows = [
        {"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]}
        for row in make_classification_dataset(num_rows=6, seed=4)
    ]
    trainer.model.train()
    tight_batch = PadCollator()(rows)
    tight = trainer.compute_loss(trainer.model, tight_batch).item()
    padded = trainer.compute_loss(trainer.model, PadCollator(extra_padding=5)(rows)).item()
    assert padded == pytest.approx(tight, rel=1e-5)
    # ...and it is the mean over the real tokens alone.
    with torch.no_grad():
        student_logits = student(**tight_batch).logits
        teacher_logits = teacher(**tight_batch).logits
    real = tight_batch["attention_mask"].bool()
    expected = logit_kd_loss(student_logits[real], teacher_logits[real], temperature=2.0, kind="kl")
    assert tight == pytest.approx(expected.item(), rel=1e-5)


# ---- pre-flight checks ----


def test_vocab_size_mismatch(tmp_path, teacher):
    with pytest.raises(
        ValueError, match=r"vocab_size differs: teacher 99 vs student 50\. Both read the same input_ids"
    ):
        make_trainer(tmp_path, teacher, make_student(vocab_size=50))


def _same_shape() -> dict:
    """The tiny student's shape and vocabulary size as keyword arguments for any BERT-like config class."""
    config = tiny_bert_config(**STUDENT_SHAPE).to_dict()
    names = ("vocab_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "id2label")
    return {name: config[name] for name in (*names, *STUDENT_SHAPE)}


def test_a_student_with_other_special_tokens_is_refused(tmp_path, teacher):
    # A RoBERTa-shaped student with the BERT teacher's vocabulary size: pad 1, bos 0, eos 2 against BERT's pad 0.
    student = RobertaForSequenceClassification(
        RobertaConfig(**_same_shape(), pad_token_id=1, bos_token_id=0, eos_token_id=2)
    )
    assert student.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(
        ValueError,
        match=r"The teacher \(bert\) and the student \(roberta\) use different special tokens: pad_token_id teacher 0 "
        r"vs student 1\. Both read the same input_ids",
    ):
        make_trainer(tmp_path, teacher, student)


def test_a_student_of_another_model_type_is_warned_about(tmp_path, teacher, caplog):
    student = ElectraForSequenceClassification(ElectraConfig(**_same_shape()))
    with caplog.at_level(logging.WARNING, logger="nlpkd.preflight"):
        make_trainer(tmp_path, teacher, student)
    assert "The teacher is a bert and the student a electra" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nlpkd.preflight"):
        make_trainer(tmp_path, teacher, make_student())
    assert "The teacher is a" not in caplog.text


def test_models_given_by_name_are_refused(tmp_path, teacher, student):
    with pytest.raises(
        TypeError, match=r"teacher_model must be a loaded model, got str 'bert-base-uncased': load it "
    ):
        make_trainer(tmp_path, "bert-base-uncased", student)
    with pytest.raises(TypeError, match=r"model must be a loaded model, got str 'tiny-student'"):
        make_trainer(tmp_path, teacher, "tiny-student")


def test_an_encoder_decoder_pair_is_sent_to_the_seq2seq_trainer(tmp_path):
    config = tiny_marian_config(d_model=16, encoder_attention_heads=2, decoder_attention_heads=2)
    with pytest.raises(
        ValueError,
        match=r"The teacher MarianMTModel is an encoder-decoder: distil it with nlpkd\.Seq2SeqDistillationTrainer",
    ):
        make_trainer(tmp_path, MarianMTModel(config), MarianMTModel(config))


def test_a_tokenizer_larger_than_the_teacher_vocabulary_is_refused(tmp_path, teacher, student):
    # ids past the embeddings failed at the first batch holding one, with "index out of range in self".
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{index}" for index in range(115))]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)})
    assert len(tokenizer) == 120
    with pytest.raises(
        ValueError,
        match=r"The tokenizer \(processing_class\) has 120 tokens, but the teacher's input embeddings have 99 rows",
    ):
        make_trainer(tmp_path, teacher, student, trainer_kwargs={"processing_class": tokenizer})


def test_num_labels_mismatch(tmp_path, teacher):
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    student = make_student(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    with pytest.raises(ValueError, match=r"num_labels differs: teacher 2 vs student 3\. Load the student with"):
        make_trainer(tmp_path, teacher, student)


def test_id2label_mismatch(tmp_path, teacher):
    student = make_student(id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})
    with pytest.raises(
        ValueError,
        match=r"id2label differs: teacher \{0: 'negative', 1: 'positive'\} vs "
        r"student \{0: 'positive', 1: 'negative'\}",
    ):
        make_trainer(tmp_path, teacher, student)


def test_default_label_names_are_not_a_mismatch(tmp_path, teacher):
    student = make_student(id2label={0: "LABEL_0", 1: "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    trainer = make_trainer(tmp_path, teacher, student)
    assert trainer.student is student


def test_head_count_mismatch_with_attention_mse(tmp_path, teacher):
    student = make_student(num_attention_heads=2)
    with pytest.raises(
        ValueError,
        match=r"attention_loss='mse' compares scores head by head, but num_attention_heads differs: teacher 4 vs "
        r"student 2\. Use a student with 4 heads, or attention_loss='kl'",
    ):
        make_trainer(tmp_path, teacher, student, attention_weight=1.0, attention_loss="mse")


def test_head_count_mismatch_is_fine_with_attention_kl(tmp_path, teacher):
    trainer = make_trainer(
        tmp_path, teacher, make_student(num_attention_heads=2), max_steps=2, attention_weight=1.0, attention_loss="kl"
    )
    trainer.train()
    assert all(entry["attention_loss"] > 0 for entry in training_logs(trainer))


@pytest.mark.parametrize(
    ("layer_map", "message"),
    [
        ([1, 2, 3], r"layer_map has 3 entries \[1, 2, 3\] but the student has 2 layers"),
        ([2, 5], r"layer_map \[2, 5\] names teacher layers \[5\], but the teacher has layers 1..4"),
    ],
)
@pytest.mark.parametrize("weight", ["hidden_weight", "attention_weight"])
def test_bad_layer_map(tmp_path, teacher, student, layer_map, message, weight):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, teacher, student, layer_map=layer_map, **{weight: 1.0})


def test_explicit_layer_map_is_used(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 3], hidden_weight=1.0, attention_weight=1.0)
    assert trainer.layer_map == [1, 3]
    assert trainer.attention_terms[0].teacher_capture.layers == [1, 3]
    assert make_trainer(tmp_path, teacher, make_student(), hidden_weight=1.0).layer_map == [2, 4]


def test_student_deeper_than_teacher(tmp_path):
    teacher = make_teacher(num_hidden_layers=2)
    student = make_student(num_hidden_layers=4)
    with pytest.raises(ValueError, match=r"The student has more layers \(4\) than the teacher \(2\)"):
        make_trainer(tmp_path, teacher, student, hidden_weight=1.0)


def test_logit_distillation_between_different_heads(tmp_path, student):
    torch.manual_seed(0)
    masked_lm_teacher = BertForMaskedLM(tiny_bert_config()).eval()
    with pytest.raises(
        ValueError,
        match=r"Logit distillation needs the same task head on both models: teacher BertForMaskedLM ForMaskedLM vs "
        r"student BertForSequenceClassification ForSequenceClassification",
    ):
        make_trainer(tmp_path, masked_lm_teacher, student)
    # Without logit distillation the heads may differ: hidden states are compared instead.
    trainer = make_trainer(tmp_path, masked_lm_teacher, student, logit_weight=0.0, hidden_weight=1.0)
    assert trainer.layer_map == [2, 4]


def test_args_must_be_distillation_arguments(tmp_path, teacher, student):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match=r"args must be a DistillationArguments, got TrainingArguments\."):
        DistillationTrainer(model=student, teacher_model=teacher, args=args)


def test_teacher_and_student_are_required(tmp_path, student):
    with pytest.raises(
        ValueError, match=r"DistillationTrainer needs both `model` \(the student\) and `teacher_model`"
    ):
        DistillationTrainer(model=student, args=make_args(tmp_path))


def test_untrained_teacher_head_warns(tmp_path, teacher, student, caplog):
    teacher.config.architectures = ["BertModel"]  # as if loaded from a base checkpoint with a fresh classifier
    with caplog.at_level(logging.WARNING, logger="nlpkd.preflight"):
        make_trainer(tmp_path, teacher, student)
    assert "its task head is freshly initialised and untrained" in caplog.text


# ---- evaluation ----


def test_evaluate_reports_the_students_own_loss(tmp_path, teacher, student):
    eval_dataset = make_classification_dataset(num_rows=10, seed=3)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=2, **ALL_LOSSES)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=eval_dataset)

    student.eval()
    batch = PadCollator()([eval_dataset[i] for i in range(len(eval_dataset))])
    with torch.no_grad():
        expected = student(**batch).loss.item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


# ---- gradient accumulation ----


def _train_with_accumulation(output_dir, teacher, dataset, batch_size, accumulation, **weights):
    trainer = make_trainer(
        output_dir,
        teacher,
        make_student(seed=1, **NO_DROPOUT),
        train_dataset=dataset,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        **EXACT_STEPS,
        **weights,
    )
    trainer.train()
    return trainer


def _equal_length_dataset(num_rows: int):
    dataset = make_classification_dataset(num_rows=num_rows, seed=5)
    return dataset.map(lambda row: {"input_ids": row["input_ids"][:4], "attention_mask": row["attention_mask"][:4]})


@pytest.mark.parametrize(
    ("weights", "dataset_builder"),
    [
        (dict(hard_label_weight=0.5, logit_weight=0.5), make_classification_dataset),
        (ALL_LOSSES, _equal_length_dataset),
        (ALL_LOSSES, make_classification_dataset),
    ],
    ids=["hard_and_logit_ragged", "all_losses_equal_length", "all_losses_ragged"],
)
def test_gradient_accumulation_matches_one_big_batch(tmp_path, weights, dataset_builder):
    teacher = make_teacher(**NO_DROPOUT)
    dataset = dataset_builder(num_rows=16)
    big_batch = _train_with_accumulation(tmp_path / "big", teacher, dataset, 8, 1, **weights)
    accumulated = _train_with_accumulation(tmp_path / "accumulated", teacher, dataset, 4, 2, **weights)
    assert big_batch.state.global_step == accumulated.state.global_step == 2
    big_weights, accumulated_weights = _trained_weights(big_batch), _trained_weights(accumulated)
    # Gradients summed in another float32 order drift the weights by ~1e-7 in 2 steps of lr 0.5; a mean of
    # per-micro-batch means (the ragged case) moves them by ~1e-3.
    assert_states_equal(accumulated_weights, big_weights, atol=1e-5)
    assert not torch.equal(big_weights["student.classifier.weight"], make_student(seed=1).classifier.weight)
    for big_entry, accumulated_entry in zip(training_logs(big_batch), training_logs(accumulated), strict=True):
        assert accumulated_entry["loss"] == pytest.approx(big_entry["loss"], rel=1e-5)


# ---- mixed precision ----


def test_bf16_autocast_training_runs_with_finite_losses(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, max_steps=2, bf16=True, **ALL_LOSSES)
    trainer.train()
    for entry in training_logs(trainer):
        for name in ("loss", "hard_loss", "logit_loss", "hidden_loss", "attention_loss"):
            assert torch.isfinite(torch.tensor(entry[name])) and entry[name] > 0, (name, entry)
    assert next(student.parameters()).dtype == torch.float32


def test_predict_on_unlabelled_data_returns_the_students_logits(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, max_steps=1, **ALL_LOSSES)
    trainer.train()
    unlabelled = make_classification_dataset(num_rows=6).remove_columns("labels")
    predictions = trainer.predict(unlabelled).predictions
    batch = PadCollator()([unlabelled[i] for i in range(6)])
    student.eval()
    with torch.no_grad():
        expected = student(**batch).logits
    torch.testing.assert_close(torch.as_tensor(predictions), expected, rtol=1e-5, atol=1e-6)
