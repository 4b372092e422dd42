"""MiniLMv2 self-attention relation distillation: the loss as maths, and the trainer's relation_loss against an
independent computation from the models' own projections."""

import pytest
import torch
import torch.nn.functional as F
from conftest import PadCollator, make_classification_dataset
from test_trainer import NO_DROPOUT, make_args, make_student, make_teacher, training_logs
from transformers import GPT2Config, GPT2LMHeadModel

from nlpkd import DistillationArguments, DistillationTrainer, Seq2SeqDistillationArguments
from nlpkd.losses import relation_kl_loss

RELATION_ONLY = dict(hard_label_weight=0.0, logit_weight=0.0, relation_weight=1.0)


def expected_relation_kl(student, teacher, heads, mask, causal=False) -> float:
    """Σ over Q, K, V of the mean over heads and real query rows of KL(teacher row ‖ student row), in float64 loops."""
    total = 0.0
    batch, length = mask.shape
    for s, t in zip(student, teacher, strict=True):
        per_row = []
        for b in range(batch):
            for h in range(heads):

                def relation(x, b=b, h=h):
                    d = x.shape[-1] // heads
                    part = x[b, :, h * d : (h + 1) * d].double()
                    return part @ part.T / d**0.5

                rs, rt = relation(s), relation(t)
                for i in range(length):
                    if not mask[b, i]:
                        continue
                    keys = [j for j in range(length) if mask[b, j] and (not causal or j <= i)]
                    p_t = F.softmax(rt[i, keys], -1)
                    per_row.append((p_t * (F.log_softmax(rt[i, keys], -1) - F.log_softmax(rs[i, keys], -1))).sum())
        total += torch.stack(per_row).mean().item()
    return total


@pytest.fixture
def projections():
    generator = torch.Generator().manual_seed(0)
    student = tuple(torch.randn(3, 6, 8, generator=generator) * 2 for _ in range(3))
    teacher = tuple(torch.randn(3, 6, 12, generator=generator) * 2 for _ in range(3))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    return student, teacher, mask


@pytest.mark.parametrize("causal", [False, True])
def test_relation_loss_equals_an_independent_computation(projections, causal):
    student, teacher, mask = projections
    expected = expected_relation_kl(student, teacher, 2, mask, causal)
    assert expected > 0.1
    # fp32 softmaxes of scores of ~10 against a float64 reference: rounding relative to the loss, and ~1e-7 absolute.
    assert relation_kl_loss(student, teacher, 2, mask, causal).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_relation_loss_of_the_same_relations_is_zero(projections):
    _, teacher, mask = projections
    assert relation_kl_loss(teacher, teacher, 4, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_padding_changes_nothing(projections):
    student, teacher, mask = projections

    def padded(states):
        return tuple(torch.cat([x, torch.randn(3, 3, x.shape[-1]) * 50], dim=1) for x in states)

    longer = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    plain = relation_kl_loss(student, teacher, 2, mask).item()
    assert relation_kl_loss(padded(student), padded(teacher), 2, longer).item() == pytest.approx(
        plain, rel=1e-5, abs=1e-6
    )


def test_the_trainers_relation_loss_reads_the_last_student_layer_and_the_chosen_teacher_layer(tmp_path):
    sharp = dict(initializer_range=0.2, **NO_DROPOUT)
    teacher, student = make_teacher(**sharp), make_student(num_attention_heads=2, **sharp)  # 16 wide, 2 heads
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **RELATION_ONLY, relation_teacher_layer=3, relation_heads=4, max_steps=2),
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )
    batch = PadCollator()([make_classification_dataset(num_rows=4, seed=5)[i] for i in range(4)])
    trainer.model.train()
    components = trainer.loss_components(batch)
    features = {name: batch[name] for name in ("input_ids", "attention_mask")}
    with torch.no_grad():
        student_states = student(**features, output_hidden_states=True).hidden_states
        teacher_states = teacher(**features, output_hidden_states=True).hidden_states

        def qkv(model, states, layer):  # the layer's projections of its input, the previous layer's output
            attention = model.bert.encoder.layer[layer - 1].attention.self
            return tuple(p(states[layer - 1]) for p in (attention.query, attention.key, attention.value))

        expected = expected_relation_kl(qkv(student, student_states, 2), qkv(teacher, teacher_states, 3), 4,
                                        batch["attention_mask"].bool())  # fmt: skip
    assert set(components) == {"relation_loss"}
    assert components["relation_loss"].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    trainer.train()
    assert all(entry["relation_loss"] > 0 for entry in training_logs(trainer))


def test_a_causal_lm_gets_causal_relations_from_its_fused_projections(tmp_path):
    from test_token_level_kd import LabelPadCollator, lm_dataset

    # Wider than GPT-2's 0.02 initialisation: relations far from uniform, so the loss is clearly above its rounding.
    config = dict(
        vocab_size=99, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3
    )
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, **config)).eval()
    student = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, **config))
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **RELATION_ONLY, max_steps=2),
        train_dataset=lm_dataset(causal=True), data_collator=LabelPadCollator(),
    )  # fmt: skip
    assert [term.causal for term in trainer.attention_terms] == [True]
    batch = LabelPadCollator()([lm_dataset(causal=True)[i] for i in range(4)])
    trainer.model.train()
    value = trainer.loss_components(batch)["relation_loss"].item()
    features = {name: batch[name] for name in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s = student(**features, output_hidden_states=True).hidden_states
        t = teacher(**features, output_hidden_states=True).hidden_states
        student_qkv = student.transformer.h[0].attn.c_attn(student.transformer.h[0].ln_1(s[0])).chunk(3, -1)
        teacher_qkv = teacher.transformer.h[1].attn.c_attn(teacher.transformer.h[1].ln_1(t[1])).chunk(3, -1)
    mask = batch["attention_mask"].bool()
    expected = expected_relation_kl(student_qkv, teacher_qkv, 4, mask, causal=True)
    assert expected > 0.05
    # fp32 log-probabilities of ~1 subtracted per key: rounding of ~1e-7 absolute besides the relative error.
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            dict(relation_heads=3),
            ValueError,
            r"relation_heads=3 must divide both widths \{'student': 16, 'teacher': 32\}",
        ),
        (dict(relation_teacher_layer=9), ValueError, r"relation_teacher_layer=9, but the teacher has layers 1\.\.4"),
    ],
)
def test_bad_relation_settings_are_named(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        DistillationTrainer(
            model=make_student(), teacher_model=make_teacher(), args=make_args(tmp_path, **RELATION_ONLY, **overrides),
            train_dataset=make_classification_dataset(), data_collator=PadCollator(),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "overrides", "message"),
    [
        (DistillationArguments, dict(relation_heads=0), r"relation_heads must be an integer >= 1"),
        (DistillationArguments, dict(teacher_logits_cache_dir="c"), r"relation_weight=0, or teacher_logits_cache"),
        (Seq2SeqDistillationArguments, {}, r"relation_weight=1.0 is for encoder-only and decoder-only models"),
    ],
)
def test_relation_arguments_are_checked(tmp_path, arguments, overrides, message):
    with pytest.raises(ValueError, match=message):
        arguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", relation_weight=1.0, **overrides)
