"""The training step's loss path never waits on the device: no shape depends on the data and no tensor value is
read on the host. On CUDA that is checked with torch's sync debug mode; everywhere, by a dispatch mode that refuses
the operators that need the data on the host (what `tensor[mask]`, `nonzero`, `.item()` and `bool(tensor)` run)."""

import pytest
import torch
from conftest import PadCollator, tiny_bert_config
from test_seq2seq import PairCollator, pair_dataset, rows_of, teacher_and_student
from test_seq2seq import make_trainer as seq2seq_trainer
from test_token_level_kd import LabelPadCollator, lm_dataset, lm_pair, lm_trainer
from test_trainer import make_args
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForSequenceClassification

from nlpkd import DistillationTrainer, make_student
from nlpkd.positions import batch_counts

# Operators whose output shape or Python result depends on tensor values: on a GPU each makes the host wait.
HOST_READS = {"nonzero", "nonzero_numpy", "masked_select", "_local_scalar_dense", "item", "is_nonzero", "unique"}


class DataDependentOperation(AssertionError):
    pass


class NoHostReads(TorchDispatchMode):
    """Fails on any operator that reads tensor values on the host or gives a data-dependent shape, including
    indexing with a boolean mask (aten.index / index_put with bool indices, which run nonzero inside)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in _indices(args)
        )
        if name in HOST_READS or boolean_index:
            raise DataDependentOperation(f"{func} reads tensor values on the host")
        return func(*args, **(kwargs or {}))


def _indices(args) -> list:
    return list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else []


def step_losses(trainer, inputs) -> dict:
    """The loss path of one training step after the forward passes, as `compute_loss` and `get_batch_samples` run
    it: the micro-batch's counts, every term's loss, the weighted sum, and its backward pass."""
    model = trainer.model
    model.train()
    inputs = trainer._prepare_inputs(dict(inputs))
    view = trainer._batch_view(model, inputs)  # the models' own forward code is theirs, not ours
    with NoHostReads():
        trainer._window_counts = batch_counts(inputs, trainer.logit_level, trainer._causal_attention, trainer.seq2seq)
        losses = {term.name: term.loss(view) for term in trainer._current_terms()}
        scales = trainer._normalisers(inputs)
        weights = trainer.scheduled_weights()
        total = sum(weights[name] * value * scales[name] for name, value in losses.items())
        total.backward()
    return losses


def test_the_check_catches_masked_selection_and_host_reads():
    values, mask = torch.randn(4, 3), torch.tensor([True, False, True, True])
    operations = (lambda: values[mask], lambda: mask.nonzero(), lambda: values.sum().item(), lambda: bool(mask.any()))
    for operation in operations:
        with pytest.raises(DataDependentOperation), NoHostReads():
            operation()
    with NoHostReads():  # the sync-free forms pass
        torch.where(mask[:, None], values, 0.0).sum() / mask.sum().clamp(min=1)


CLASSIFICATION_LOSSES = {
    "attention_mse": dict(hidden_weight=1.0, attention_weight=1.0),
    "attention_kl": dict(hidden_weight=1.0, attention_weight=1.0, attention_loss="kl"),
    "relation": dict(relation_weight=1.0),
    "temperature_schedule": dict(temperature_schedule="linear", loss_schedule="two_phase"),
}


@pytest.mark.parametrize("losses", list(CLASSIFICATION_LOSSES))
def test_classification_loss_path_is_sync_free(tmp_path, teacher, student, classification_dataset, losses):
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **CLASSIFICATION_LOSSES[losses])
    )
    batch = PadCollator(extra_padding=1)([classification_dataset[index] for index in range(4)])
    batch["labels"][1] = -100  # an augmented row the hard loss skips
    losses = step_losses(trainer, batch)
    assert all(torch.isfinite(value) for value in losses.values()) and "logit_loss" in losses


@pytest.mark.parametrize("own_cross_entropy", [False, True])  # the model's loss, or the hard term's from the logits
@pytest.mark.parametrize("kind", ["mlm", "bert_clm", "gpt2"])
def test_language_model_loss_path_is_sync_free(tmp_path, kind, own_cross_entropy):
    teacher, student = lm_pair(kind)
    trainer = lm_trainer(
        tmp_path, teacher, student, lm_dataset(causal=kind != "mlm"), hidden_weight=1.0, attention_weight=1.0
    )
    trainer._own_cross_entropy = own_cross_entropy
    batch = LabelPadCollator(extra_padding=2)([lm_dataset(causal=kind != "mlm")[index] for index in range(4)])
    losses = step_losses(trainer, batch)
    assert set(losses) == {"hard_loss", "logit_loss", "hidden_loss", "attention_loss"}
    assert all(torch.isfinite(value) for value in losses.values())


def test_seq2seq_loss_path_is_sync_free(tmp_path):
    teacher, student = teacher_and_student("marian")
    trainer = seq2seq_trainer(tmp_path, teacher, student, hidden_weight=1.0, attention_weight=1.0)
    batch = PairCollator(extra_padding=1)(rows_of(pair_dataset(), 4))
    losses = step_losses(trainer, batch)
    assert {"encoder_attention_loss", "decoder_attention_loss", "cross_attention_loss"} <= set(losses)


def test_all_ignored_labels_give_zero_hard_loss_and_finite_gradients_without_host_reads(tmp_path):
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(tiny_bert_config())
    student = make_student(teacher, num_hidden_layers=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, logit_weight=0.0))
    batch = {
        "input_ids": torch.randint(5, 99, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
        "labels": torch.full((3,), -100),
    }
    losses = step_losses(trainer, batch)
    assert losses["hard_loss"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)


ALL_CUDA_LOSSES = dict(hidden_weight=1.0, attention_weight=1.0, relation_weight=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's sync debug mode checks CUDA streams")
def test_cuda_loss_path_raises_no_sync_error(tmp_path, teacher, student, classification_dataset):
    trainer = DistillationTrainer(
        model=student.cuda(), teacher_model=teacher, args=make_args(tmp_path, use_cpu=False, **ALL_CUDA_LOSSES)
    )
    rows = [classification_dataset[index] for index in range(4)]
    batch = trainer._prepare_inputs(PadCollator(extra_padding=1)(rows))
    model = trainer.model.train()
    view = trainer._batch_view(model, batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = {term.name: term.loss(view) for term in trainer._current_terms()}
        scales = trainer._normalisers(batch)
        sum(trainer.loss_weights[name] * value * scales[name] for name, value in losses.items()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
