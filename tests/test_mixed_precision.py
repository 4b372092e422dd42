"""Mixed precision: bf16 autocast on CPU gives fp32 losses close to fp32's; fp16 on CPU fails before training; a batch
with nothing to learn gives 0 and finite gradients in half precision too."""

import pytest
import torch
from conftest import PadCollator, make_classification_dataset, tiny_bert_config
from transformers import BertForMaskedLM, BertForSequenceClassification

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.capture import AttentionCapture
from nlpkd.losses import attention_kl_loss, attention_scores_mse_loss, hidden_mse_loss, logit_kd_loss

SHARP = dict(initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ALL_LOSSES = dict(hard_label_weight=0.3, logit_weight=0.7, hidden_weight=2.0, attention_weight=0.1)
LAYERS = [1, 2]


def _args(tmp_path, **overrides) -> DistillationArguments:
    settings = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")
    return DistillationArguments(**{**settings, **overrides})


def _forward_losses(model_a, model_b, batch, autocast: bool) -> dict[str, torch.Tensor]:
    """Every loss between two same-width models' outputs, with both forwards in bf16 autocast or in fp32."""
    capture_a, capture_b = AttentionCapture(model_a, LAYERS), AttentionCapture(model_b, LAYERS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with capture_a.recording():
            outputs_a = model_a(**batch, output_hidden_states=True)
        with capture_b.recording():
            outputs_b = model_b(**batch, output_hidden_states=True)
        mask = batch["attention_mask"]
        scores_a, scores_b = capture_a.scores(1), capture_b.scores(1)
        losses = {
            "logit": logit_kd_loss(outputs_a.logits, outputs_b.logits, temperature=2.0),
            "hidden": hidden_mse_loss(outputs_a.hidden_states[2], outputs_b.hidden_states[2], mask),
            "attention_mse": attention_scores_mse_loss(scores_a, scores_b, mask),
            "attention_kl": attention_kl_loss(scores_a, scores_b, mask),
        }
    if autocast:  # half-precision activations in (the linear layers' outputs), fp32 scores and losses out
        assert outputs_a.logits.dtype == torch.bfloat16
        assert scores_a.dtype == torch.float32
    return losses


def test_bf16_autocast_losses_are_fp32_finite_and_close_to_fp32():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2, **SHARP)).eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2, **SHARP)).eval()
    batch = PadCollator()([make_classification_dataset(num_rows=6, seed=4)[i] for i in range(6)])
    batch.pop("labels")
    full = _forward_losses(student, teacher, batch, autocast=False)
    half = _forward_losses(student, teacher, batch, autocast=True)
    for name, value in half.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value) and value > 0, name
        # bf16 keeps 8 bits of mantissa: activations are off by ~0.4 %, losses by a few percent at most. The logit KL
        # (~0.2) is a difference of log-probabilities of ~1: its error (~1e-3) is absolute, hence the abs floor.
        assert value.item() == pytest.approx(full[name].item(), rel=5e-2, abs=2e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_valid_position_gives_zero_and_finite_gradients(dtype):
    student_logits = torch.randn(2, 5, 7, dtype=dtype, requires_grad=True)
    student_hidden = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
    student_scores = torch.randn(2, 4, 5, 5, dtype=dtype, requires_grad=True)
    # Padded positions of half-precision activations may hold inf: they must not reach the loss or its gradient.
    teacher_hidden = torch.full((2, 5, 8), float("inf"), dtype=dtype)
    teacher_scores = torch.full((2, 4, 5, 5), float("-inf"), dtype=dtype)
    no_token = torch.zeros(2, 5, dtype=torch.long)
    losses = {
        "logit": logit_kd_loss(student_logits, torch.randn(2, 5, 7, dtype=dtype), mask=no_token.bool()),
        "logit_no_rows": logit_kd_loss(student_logits[no_token.bool()], torch.randn(0, 7, dtype=dtype)),
        "hidden": hidden_mse_loss(student_hidden, teacher_hidden, no_token),
        "attention_mse": attention_scores_mse_loss(student_scores, teacher_scores, no_token),
        "attention_mse_causal": attention_scores_mse_loss(student_scores, teacher_scores, no_token, causal=True),
        "attention_kl": attention_kl_loss(student_scores, teacher_scores, no_token),
        "cross_attention_kl": attention_kl_loss(student_scores, teacher_scores, no_token, key_mask=no_token),
    }
    for name, loss in losses.items():
        assert loss.item() == 0.0, name
        loss.backward()
    for tensor in (student_logits, student_hidden, student_scores):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def test_all_padding_batch_with_no_label_gives_zero_loss_under_bf16(tmp_path):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_bert_config(**SHARP)).eval()
    torch.manual_seed(1)
    student = BertForMaskedLM(tiny_bert_config(hidden_size=16, num_hidden_layers=2, intermediate_size=20, **SHARP))
    args = _args(tmp_path, bf16=True, **ALL_LOSSES)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    batch = {
        "input_ids": torch.zeros(2, 6, dtype=torch.long),
        "attention_mask": torch.zeros(2, 6, dtype=torch.long),
        "labels": torch.full((2, 6), -100),
    }
    trainer.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    gradients = [param.grad for param in trainer.model.parameters() if param.grad is not None]
    assert gradients and all(torch.isfinite(grad).all() for grad in gradients)


def test_short_bf16_run_on_cpu_trains(tmp_path):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(**SHARP)).eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_bert_config(hidden_size=16, num_hidden_layers=2, **SHARP))
    args = _args(
        tmp_path,
        bf16=True,
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        attention_loss="kl",
        **ALL_LOSSES,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=make_classification_dataset(num_rows=32),
        data_collator=PadCollator(extra_padding=3),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        for name in ("loss", "hard_loss", "logit_loss", "hidden_loss", "attention_loss"):
            assert torch.isfinite(torch.tensor(entry[name])) and entry[name] > 0, (name, entry)
    assert logs[-1]["hidden_loss"] < logs[0]["hidden_loss"]
    assert next(student.parameters()).dtype == torch.float32  # autocast: the weights stay fp32


def test_fp16_on_cpu_fails_before_training_and_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"fp16=True needs a GPU.*use bf16=True"):
        _args(tmp_path, fp16=True)


def test_a_bf16_student_trains_with_the_hidden_state_loss(tmp_path):
    # Weights in bf16 (loaded with dtype=torch.bfloat16), no autocast: the fp32 projections meet bf16 hidden states.
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2)).eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(
        tiny_bert_config(hidden_size=16, intermediate_size=20, num_hidden_layers=2)
    )
    student.to(torch.bfloat16)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, max_steps=2, per_device_train_batch_size=4, logging_steps=1, **ALL_LOSSES),
        train_dataset=make_classification_dataset(num_rows=8),
        data_collator=PadCollator(),
    )
    assert all(p.dtype == torch.float32 for p in trainer.model.projections.parameters())
    trainer.train()
    losses = [entry["hidden_loss"] for entry in trainer.state.log_history if "hidden_loss" in entry]
    assert len(losses) == 2 and all(loss > 0 and torch.isfinite(torch.tensor(loss)) for loss in losses)
