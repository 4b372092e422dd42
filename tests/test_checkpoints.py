"""Resuming never takes a checkpoint that a crash left half-written (nlpkd.checkpoints), in the trainer's stages and in
the recipes' teacher stage."""

import json
import logging

import pytest
import torch
from conftest import PadCollator, crash_while_saving_at, make_classification_dataset, tiny_bert_config
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from nlpkd.checkpoints import incomplete_reason, last_complete_checkpoint, resolve_resume, save_whole
from nlpkd.recipe_args import TeacherArguments
from nlpkd.teacher_stage import finetune_teacher_once


def _checkpoint(folder, step: int, state: str | None = "{}", weights: bool = True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_a_checkpoint_is_complete_with_a_readable_trainer_state_and_weights(tmp_path):
    assert incomplete_reason(_checkpoint(tmp_path, 1)) is None
    assert incomplete_reason(_checkpoint(tmp_path, 2, state=None)) == (
        "no trainer_state.json: the run stopped while writing it"
    )
    assert incomplete_reason(_checkpoint(tmp_path, 3, state='{"global_step": 3, "log_hi')) == (
        "trainer_state.json is cut short: the run stopped while writing it"
    )
    assert incomplete_reason(_checkpoint(tmp_path, 4, weights=False)) == "no model weights"


def test_the_last_complete_checkpoint_is_found_by_step_not_by_name(tmp_path, caplog):
    _checkpoint(tmp_path, 9)
    _checkpoint(tmp_path, 10)  # "checkpoint-10" sorts before "checkpoint-9" as text
    _checkpoint(tmp_path, 12, state=None)
    (tmp_path / "checkpoint-notes.txt").write_text("not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="nlpkd.checkpoints"):
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert "Skipping the incomplete checkpoint" in caplog.text and "checkpoint-12" in caplog.text
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None


def test_resume_true_without_a_complete_checkpoint_says_so(tmp_path):
    _checkpoint(tmp_path, 2, state=None)
    with pytest.raises(
        ValueError, match=r"resume_from_checkpoint=True, but output_dir='.*' holds no complete checkpoint"
    ):
        resolve_resume(True, str(tmp_path))
    assert resolve_resume(None, str(tmp_path)) is None and resolve_resume(False, str(tmp_path)) is None
    complete = _checkpoint(tmp_path, 1)
    assert resolve_resume(str(complete), str(tmp_path)) == str(complete)
    assert resolve_resume("true", str(tmp_path)) == resolve_resume(True, str(tmp_path)) == str(complete)


def test_the_teacher_stage_resumes_from_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """The recipes' stage 1 (fine-tune the teacher once) goes on after a crash mid-save from the checkpoint before."""
    torch.manual_seed(0)
    base = tmp_path / "base"
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2)).save_pretrained(base)
    teacher_args = TeacherArguments(teacher_num_train_epochs=1, teacher_cache_dir=str(tmp_path / "teachers"))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=4, max_steps=6
    )
    stage = dict(
        auto_class=BertForSequenceClassification,
        teacher_path=str(base),
        cache_key=("test",),
        teacher_args=teacher_args,
        args=args,
        train_dataset=make_classification_dataset(num_rows=24),
        data_collator=PadCollator(),
        tokenizer=None,
        training_changes={"save_strategy": "steps", "save_steps": 2},
    )
    crash_while_saving_at(4, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune_teacher_once(**stage)
    monkeypatch.undo()
    (run,) = (tmp_path / "teachers").glob("*/run")
    assert not (run / "checkpoint-4" / "trainer_state.json").exists()

    train, resumed_from = Trainer.train, []

    def recording_train(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(Trainer, "train", recording_train)
    teacher = finetune_teacher_once(**stage)
    assert resumed_from == [str(run / "checkpoint-2")]
    assert json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert teacher.name_or_path == str(run.parent)


def test_a_save_cut_short_leaves_no_config_json(tmp_path):
    """A kept teacher is recognised by its config.json: a save killed after writing it (save_pretrained writes it
    first) would leave a folder that looks complete but has no weights."""
    folder = tmp_path / "teacher"

    def save_and_die(staging):
        BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).config.save_pretrained(staging)
        raise KeyboardInterrupt("killed before the weights were written")

    with pytest.raises(KeyboardInterrupt):
        save_whole(save_and_die, str(folder))
    assert not (folder / "config.json").exists()

    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1))
    save_whole(model.save_pretrained, str(folder))  # the next run saves over what the cut one left
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "teacher.saving").exists()
    BertForSequenceClassification.from_pretrained(folder)
