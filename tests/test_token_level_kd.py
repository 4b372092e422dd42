"""Token-level distillation of masked and causal LMs, GPT-2 attention capture, and general distillation."""

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB_SIZE, tiny_bert_config
from datasets import Dataset
from test_trainer import EXACT_STEPS, assert_states_equal, make_args, training_logs
from transformers import (
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertLMHeadModel,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from nlpkd import DistillationTrainer, make_student
from nlpkd.capture import AttentionCapture

NO_DROPOUT_BERT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TEMPERATURE = 2.0


def gpt2_config(**overrides) -> GPT2Config:
    settings = dict(
        vocab_size=VOCAB_SIZE,
        n_embd=32,
        n_layer=4,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    settings.update(overrides)
    return GPT2Config(**settings)


def lm_pair(kind: str):
    """(teacher, student) of one LM family: masked BERT, BERT as a causal decoder, or GPT-2."""
    torch.manual_seed(0)
    if kind == "mlm":
        teacher = BertForMaskedLM(tiny_bert_config(**NO_DROPOUT_BERT))
    elif kind == "bert_clm":
        teacher = BertLMHeadModel(tiny_bert_config(is_decoder=True, **NO_DROPOUT_BERT))
    else:
        teacher = GPT2LMHeadModel(gpt2_config())
    torch.manual_seed(1)
    student = make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=20)
    return teacher.eval(), student


def lm_dataset(num_rows: int = 16, seed: int = 0, causal: bool = False) -> Dataset:
    """Ragged rows with labels: MLM labels on ~30 % of tokens, causal labels on every token but a few ignored."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(num_rows):
        length = int(torch.randint(5, 14, (1,), generator=generator))
        ids = torch.randint(5, VOCAB_SIZE, (length,), generator=generator)
        chosen = torch.rand(length, generator=generator) < (0.85 if causal else 0.3)
        chosen[1] = True  # every row has at least one label
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(torch.where(chosen, ids, torch.full_like(ids, -100)).tolist())
    return Dataset.from_dict(rows)


class LabelPadCollator:
    """Right-pads ids and mask with 0 and labels with -100, plus `extra_padding` positions."""

    def __init__(self, extra_padding: int = 0):
        self.extra_padding = extra_padding

    def __call__(self, rows):
        length = max(len(row["input_ids"]) for row in rows) + self.extra_padding

        def pad(name, value):
            return torch.tensor([row[name] + [value] * (length - len(row[name])) for row in rows])

        return {
            "input_ids": pad("input_ids", 0),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", -100),
        }


def lm_trainer(tmp_path, teacher, student, dataset=None, collator=None, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else lm_dataset(),
        data_collator=collator or LabelPadCollator(),
    )


def expected_kl(student_logits, teacher_logits) -> torch.Tensor:
    """Mean over the given positions of T²·KL(softmax(t/T) ‖ softmax(s/T)), written out."""
    p_teacher = F.softmax(teacher_logits / TEMPERATURE, dim=-1)
    log_ratio = F.log_softmax(teacher_logits / TEMPERATURE, dim=-1) - F.log_softmax(student_logits / TEMPERATURE, -1)
    return (p_teacher * log_ratio).sum(-1).mean() * TEMPERATURE**2


def logit_loss_of(trainer, student, teacher, batch) -> torch.Tensor:
    student.train()
    return trainer.compute_loss(trainer.model, batch)


# ---- token-level logit KD against an independent computation ----


def test_masked_lm_logit_kd_counts_only_labelled_positions(tmp_path):
    teacher, student = lm_pair("mlm")
    trainer = lm_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0, temperature=TEMPERATURE)
    batch = LabelPadCollator()([lm_dataset()[i] for i in range(6)])
    loss = logit_loss_of(trainer, student, teacher, batch)

    features = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        teacher_logits = teacher(**features).logits
    student_logits = student(**features).logits
    labelled = batch["labels"] != -100
    assert 0 < labelled.sum() < batch["attention_mask"].sum()  # the check would be blind otherwise
    torch.testing.assert_close(loss, expected_kl(student_logits[labelled], teacher_logits[labelled]))


@pytest.mark.parametrize("kind", ["bert_clm", "gpt2"])
def test_causal_lm_logit_kd_uses_the_next_token_labels(tmp_path, kind):
    teacher, student = lm_pair(kind)
    trainer = lm_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0, temperature=TEMPERATURE)
    batch = LabelPadCollator()([lm_dataset(causal=True)[i] for i in range(6)])
    loss = logit_loss_of(trainer, student, teacher, batch)

    features = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        teacher_logits = teacher(**features).logits
    student_logits = student(**features).logits
    # Position i predicts token i+1: it counts when label i+1 is not ignored; the last position never counts.
    counted = torch.zeros_like(batch["labels"], dtype=torch.bool)
    counted[:, :-1] = batch["labels"][:, 1:] != -100
    assert not counted[batch["labels"] == -100].all()  # shifted and unshifted masks differ in this batch
    torch.testing.assert_close(loss, expected_kl(student_logits[counted], teacher_logits[counted]))
    # The hard loss is the model's own shifted loss: its gradient weights are the same positions.
    own = student(**batch).loss
    by_hand = F.cross_entropy(student_logits[counted], batch["input_ids"][:, 1:][counted[:, :-1]])
    torch.testing.assert_close(own, by_hand)


@pytest.mark.parametrize("kind", ["mlm", "bert_clm", "gpt2"])
def test_padding_and_ignored_labels_change_nothing(tmp_path, kind):
    teacher, student = lm_pair(kind)
    trainer = lm_trainer(
        tmp_path, teacher, student, hard_label_weight=0.5, logit_weight=0.5, hidden_weight=1.0, attention_weight=1.0
    )
    rows = [lm_dataset(causal=kind != "mlm")[i] for i in range(4)]
    tight = logit_loss_of(trainer, student, teacher, LabelPadCollator()(rows))
    padded = logit_loss_of(trainer, student, teacher, LabelPadCollator(extra_padding=5)(rows))
    torch.testing.assert_close(padded, tight, rtol=1e-5, atol=1e-6)


def test_a_batch_with_no_label_gives_zero_logit_loss_and_finite_gradients(tmp_path):
    teacher, student = lm_pair("mlm")
    trainer = lm_trainer(tmp_path, teacher, student, hard_label_weight=0.5, logit_weight=0.5)
    batch = LabelPadCollator()([lm_dataset()[i] for i in range(3)])
    batch["labels"].fill_(-100)
    loss = logit_loss_of(trainer, student, teacher, batch)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_lm_vocab_mismatch_names_both_sizes(tmp_path):
    teacher, _ = lm_pair("gpt2")
    student = GPT2LMHeadModel(gpt2_config(vocab_size=VOCAB_SIZE + 7, n_layer=2))
    with pytest.raises(ValueError, match=rf"vocab_size differs: teacher {VOCAB_SIZE} vs student {VOCAB_SIZE + 7}"):
        lm_trainer(tmp_path, teacher, student)


# ---- gradient accumulation with uneven label counts ----


@pytest.mark.parametrize("kind", ["mlm", "gpt2"])
def test_gradient_accumulation_matches_one_big_batch_for_token_losses(tmp_path, kind):
    dataset = lm_dataset(num_rows=16, seed=3, causal=kind == "gpt2")
    weights = dict(hard_label_weight=0.3, logit_weight=0.7, hidden_weight=2.0, attention_weight=0.5)
    trained = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        teacher, student = lm_pair(kind)
        trainer = lm_trainer(
            tmp_path / f"{batch_size}x{accumulation}",
            teacher,
            student,
            dataset=dataset,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            **EXACT_STEPS,
            **weights,
        )
        trainer.train()
        trained.append(trainer)
    big, accumulated = trained
    # The two micro-batches of each step hold different numbers of labels and tokens: a mean of means would differ.
    first_half = LabelPadCollator()([dataset[i] for i in range(4)])
    assert (first_half["labels"] != -100).sum() * 2 != (
        LabelPadCollator()([dataset[i] for i in range(8)])["labels"] != -100
    ).sum()
    big_state = {k: v for k, v in big.model.state_dict().items()}
    accumulated_state = {k: v for k, v in accumulated.model.state_dict().items()}
    assert_states_equal(accumulated_state, big_state, atol=1e-5)
    start = lm_pair(kind)[1].state_dict()
    assert any(not torch.equal(big_state[f"student.{k}"], v) for k, v in start.items())
    for big_entry, accumulated_entry in zip(training_logs(big), training_logs(accumulated), strict=True):
        assert accumulated_entry["loss"] == pytest.approx(big_entry["loss"], rel=1e-5)


# ---- GPT-2 attention capture ----


def test_gpt2_capture_equals_eager_attention_under_the_causal_mask():
    torch.manual_seed(0)
    sdpa = GPT2LMHeadModel(gpt2_config(n_layer=3)).eval()
    eager = GPT2LMHeadModel(gpt2_config(n_layer=3, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    input_ids = torch.tensor([[5, 17, 33, 8, 61, 12], [7, 44, 9, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    capture = AttentionCapture(sdpa, [1, 3])
    assert capture.causal
    with torch.no_grad(), capture.recording():
        sdpa(input_ids=input_ids, attention_mask=attention_mask)
        eager_attentions = eager(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    hidden = future[None, None] | ~attention_mask.bool()[:, None, None, :]
    for layer in (1, 3):
        scores = capture.scores(layer)
        # Hand computation from the fused c_attn projection: Q·Kᵀ/√d.
        attention = sdpa.transformer.h[layer - 1].attn
        with torch.no_grad():
            hidden_in = sdpa.transformer.h[layer - 1].ln_1(
                sdpa(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[
                    layer - 1
                ]
            )
            query, key, _ = attention.c_attn(hidden_in).split(32, dim=-1)
        query = query.view(2, 6, 4, 8).transpose(1, 2)
        key = key.view(2, 6, 4, 8).transpose(1, 2)
        torch.testing.assert_close(scores, query @ key.transpose(-1, -2) / 8**0.5, rtol=1e-5, atol=1e-5)
        probabilities = scores.masked_fill(hidden, torch.finfo(torch.float32).min).softmax(-1)
        real_rows = attention_mask.bool()
        torch.testing.assert_close(
            probabilities.transpose(1, 2)[real_rows],
            eager_attentions[layer - 1].transpose(1, 2)[real_rows],
            rtol=1e-4,
            atol=1e-5,
        )


def test_causal_models_get_causal_attention_losses(tmp_path):
    teacher, student = lm_pair("gpt2")
    trainer = lm_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=0.0, attention_weight=1.0)
    assert [term.causal for term in trainer.attention_terms] == [True]
    student_bert = lm_pair("mlm")
    trainer_bert = lm_trainer(
        tmp_path / "bert", *student_bert, hard_label_weight=0.0, logit_weight=0.0, attention_weight=1.0
    )
    assert [term.causal for term in trainer_bert.attention_terms] == [False]


# ---- general distillation of bare encoders ----


def test_general_distillation_trains_a_body_that_loads_with_a_task_head(tmp_path):
    torch.manual_seed(0)
    teacher = BertModel(tiny_bert_config()).eval()
    student = make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=20)
    rows = lm_dataset(num_rows=16).remove_columns("labels")
    collator = LabelPadCollator()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_path,
            hard_label_weight=0.0,
            logit_weight=0.0,
            hidden_weight=1.0,
            attention_weight=1.0,
            max_steps=8,
            learning_rate=5e-3,
        ),
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=lambda batch: {
            k: v for k, v in collator([{**r, "labels": r["input_ids"]} for r in batch]).items() if k != "labels"
        },
    )
    before = trainer.evaluate()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train()
    after = trainer.evaluate()
    for metrics in (before, after):
        assert {"eval_loss", "eval_hidden_loss", "eval_attention_loss"} <= metrics.keys()
        total = metrics["eval_hidden_loss"] + metrics["eval_attention_loss"]
        assert metrics["eval_loss"] == pytest.approx(total, rel=1e-5)  # float32 sums in another order
    assert after["eval_loss"] < before["eval_loss"]
    logs = training_logs(trainer)
    assert all({"hidden_loss", "attention_loss"} <= entry.keys() for entry in logs)
    assert_states_equal(teacher.state_dict(), teacher_state)

    trainer.save_model(tmp_path / "body")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "body", num_labels=2)
    torch.testing.assert_close(
        classifier.bert.encoder.layer[0].attention.self.query.weight,
        trainer.student.encoder.layer[0].attention.self.query.weight,
    )


@pytest.mark.parametrize("weight", ["hard_label_weight", "logit_weight"])
def test_bare_student_refuses_label_and_logit_losses(tmp_path, weight):
    torch.manual_seed(0)
    teacher = BertModel(tiny_bert_config())
    student = make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=20)
    weights = dict(hard_label_weight=0.0, logit_weight=0.0, hidden_weight=1.0)
    weights[weight] = 0.5
    with pytest.raises(
        ValueError, match=rf"{weight}=0.5, but the student BertModel is a bare model with no task head"
    ):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, **weights))


def test_causal_lm_logit_kd_with_every_position_labelled(tmp_path):
    teacher, student = lm_pair("gpt2")
    trainer = lm_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0, temperature=TEMPERATURE)
    input_ids = torch.randint(5, VOCAB_SIZE, (3, 9), generator=torch.Generator().manual_seed(4))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    loss = logit_loss_of(trainer, student, teacher, batch)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids).logits[:, :-1]
    student_logits = student(input_ids=input_ids).logits[:, :-1]
    flat = student_logits.shape[-1]
    torch.testing.assert_close(loss, expected_kl(student_logits.reshape(-1, flat), teacher_logits.reshape(-1, flat)))


@pytest.mark.parametrize("kind", ["mlm", "bert_clm", "gpt2"])
def test_the_hard_loss_is_computed_from_the_logits_after_one_check_with_the_same_values(tmp_path, kind):
    teacher, student = lm_pair(kind)
    dataset = lm_dataset(causal=kind != "mlm")
    trainer = lm_trainer(tmp_path, teacher, student, dataset)
    batch = trainer._prepare_inputs(LabelPadCollator(extra_padding=2)([dataset[index] for index in range(4)]))
    assert trainer._own_cross_entropy is None
    trainer.model.train()
    with torch.no_grad():
        model_loss = trainer._term_losses(trainer.model, batch)[1]["hard_loss"]  # the check runs on this batch
        assert trainer._own_cross_entropy is True
        outputs, losses = trainer._term_losses(trainer.model, batch)
    assert outputs.loss is None  # the student ran without its labels
    torch.testing.assert_close(losses["hard_loss"], model_loss, rtol=1e-5, atol=1e-6)


def test_a_student_whose_loss_is_not_plain_cross_entropy_keeps_its_own(tmp_path, monkeypatch):
    teacher, student = lm_pair("gpt2")
    original = type(student).forward

    def forward_with_an_auxiliary_loss(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if outputs.loss is not None:
            outputs.loss = outputs.loss + 0.5  # e.g. a router's auxiliary loss
        return outputs

    monkeypatch.setattr(type(student), "forward", forward_with_an_auxiliary_loss)
    dataset = lm_dataset(causal=True)
    trainer = lm_trainer(tmp_path, teacher, student, dataset)
    batch = trainer._prepare_inputs(LabelPadCollator()([dataset[index] for index in range(4)]))
    trainer.model.train()
    with torch.no_grad():
        first = trainer._term_losses(trainer.model, batch)[1]["hard_loss"]
        second = trainer._term_losses(trainer.model, batch)[1]["hard_loss"]
    assert trainer._own_cross_entropy is False
    torch.testing.assert_close(first, second)  # the model's own loss, auxiliary part included, both times
