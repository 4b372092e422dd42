"""Seq2SeqDistillationTrainer on tiny config-built Marian, T5 and BERT2BERT (EncoderDecoderModel) pairs, on CPU."""

import copy as copy_module

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_marian_config
from datasets import Dataset
from safetensors import safe_open
from test_trainer import EXACT_STEPS, assert_states_equal, clone_state, spy_on_forward, training_logs
from transformers import (
    BertConfig,
    BertLMHeadModel,
    BertModel,
    EncoderDecoderModel,
    HfArgumentParser,
    MarianMTModel,
    T5Config,
    T5ForConditionalGeneration,
)

from nlpkd import Seq2SeqDistillationArguments, Seq2SeqDistillationTrainer, make_student
from nlpkd.capture import AttentionCapture
from nlpkd.distillation_model import PROJECTIONS_NAME
from nlpkd.positions import batch_counts
from nlpkd.terms import stack_layers

VOCAB = 60
PAD, EOS = 0, 1
TEMPERATURE = 2.0
FAMILIES = ("marian", "t5", "bert2bert")
ALL_LOSSES = dict(hard_label_weight=0.3, logit_weight=0.7, hidden_weight=2.0, attention_weight=0.5)
# Teacher: 4 encoder and 2 decoder layers, 32 wide. Student: 2 + 1 layers, 16 wide, as many heads.
STUDENT_SHAPE = dict(
    num_hidden_layers=2, num_decoder_layers=1, hidden_size=16, num_attention_heads=4, intermediate_size=32
)


# ---- tiny teachers ----


def marian(encoder_layers=4, decoder_layers=2, seed=0, **overrides) -> MarianMTModel:
    settings = dict(
        vocab_size=VOCAB,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.2,  # peaked attention: the attention losses are clearly non-zero
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return MarianMTModel(tiny_marian_config(**settings)).eval()


def t5(encoder_layers=4, decoder_layers=2, seed=0, **overrides) -> T5ForConditionalGeneration:
    settings = dict(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=encoder_layers,
        num_decoder_layers=decoder_layers,
        num_heads=4,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        dropout_rate=0.0,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**settings)).eval()


def bert2bert(
    encoder_layers=4, decoder_layers=2, seed=0, decoder_vocab_size=VOCAB, **overrides
) -> EncoderDecoderModel:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(num_hidden_layers=encoder_layers, **settings))
    decoder_settings = {**settings, "vocab_size": decoder_vocab_size}
    decoder = BertLMHeadModel(
        BertConfig(num_hidden_layers=decoder_layers, is_decoder=True, add_cross_attention=True, **decoder_settings)
    )
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 2
    model.config.pad_token_id = PAD
    return model.eval()


BUILDERS = {"marian": marian, "t5": t5, "bert2bert": bert2bert}


def teacher_and_student(family: str, **student_shape):
    teacher = BUILDERS[family]()
    torch.manual_seed(1)
    student = make_student(teacher, **{**STUDENT_SHAPE, **student_shape})
    return teacher, student


def decoder_start(model) -> int:
    return model.config.decoder_start_token_id


def shift_right(labels: torch.Tensor, start: int) -> torch.Tensor:
    """Decoder inputs written out: the start token, then the labels one to the right, with -100 read as padding."""
    shifted = torch.full_like(labels, PAD)
    shifted[:, 0] = start
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, PAD)


# ---- data ----


def pair_dataset(num_rows: int = 16, seed: int = 0) -> Dataset:
    """Ragged sources and targets (each ending in EOS), so both sides of every batch hold padding."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for _ in range(num_rows):
        source_length = int(torch.randint(3, 10, (1,), generator=generator))
        target_length = int(torch.randint(2, 8, (1,), generator=generator))
        rows["input_ids"].append(torch.randint(3, VOCAB, (source_length,), generator=generator).tolist() + [EOS])
        rows["labels"].append(torch.randint(3, VOCAB, (target_length,), generator=generator).tolist() + [EOS])
    return Dataset.from_dict(rows)


class PairCollator:
    """Right-pads sources (PAD, attention_mask 0) and labels (-100) plus `extra_padding` positions each; with
    `decoder_start`, also gives `decoder_input_ids` (the labels shifted right)."""

    def __init__(self, decoder_start: int | None = None, extra_padding: int = 0):
        self.decoder_start = decoder_start
        self.extra_padding = extra_padding

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        def pad(name, value):
            length = max(len(row[name]) for row in rows) + self.extra_padding
            return torch.tensor([row[name] + [value] * (length - len(row[name])) for row in rows])

        batch = {"input_ids": pad("input_ids", PAD)}
        batch["attention_mask"] = torch.tensor(
            [[1] * len(row["input_ids"]) + [0] * (batch["input_ids"].shape[1] - len(row["input_ids"])) for row in rows]
        )
        if "labels" not in rows[0]:
            return batch
        batch["labels"] = pad("labels", -100)
        if self.decoder_start is not None:
            batch["decoder_input_ids"] = shift_right(batch["labels"], self.decoder_start)
        return batch


def rows_of(dataset: Dataset, count: int) -> list[dict]:
    return [dataset[i] for i in range(count)]


# ---- trainer ----


def make_args(output_dir, **overrides) -> Seq2SeqDistillationArguments:
    settings = dict(
        output_dir=str(output_dir),
        report_to="none",
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        temperature=TEMPERATURE,
    )
    settings.update(overrides)
    return Seq2SeqDistillationArguments(**settings)


def make_trainer(output_dir, teacher, student, dataset=None, collator=None, **overrides):
    return Seq2SeqDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(output_dir, **overrides),
        train_dataset=dataset if dataset is not None else pair_dataset(),
        data_collator=collator or PairCollator(),
    )


def term_names(trainer) -> list[str]:
    return [term.name for term in trainer.hidden_terms + trainer.attention_terms]


# ---- word-level KD against an independent computation ----


def expected_word_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the given positions of T²·KL(softmax(t/T) ‖ softmax(s/T)), written out."""
    p_teacher = F.softmax(teacher_logits / TEMPERATURE, dim=-1)
    log_ratio = F.log_softmax(teacher_logits / TEMPERATURE, -1) - F.log_softmax(student_logits / TEMPERATURE, -1)
    return (p_teacher * log_ratio).sum(-1).mean() * TEMPERATURE**2


@pytest.mark.parametrize("family", FAMILIES)
def test_word_level_kd_is_the_kl_over_labelled_target_positions(tmp_path, family):
    teacher, student = teacher_and_student(family)
    trainer = make_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0)
    trainer.model.train()
    rows = rows_of(pair_dataset(seed=2), 6)

    def word_kd(batch: dict) -> float:
        components = trainer.loss_components(batch)
        loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
        assert set(components) == {"logit_loss"}
        assert components["logit_loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        return loss.item()

    batch = PairCollator()(rows)  # no decoder_input_ids: the trainer makes them
    labels = batch["labels"]
    assert len({len(row["input_ids"]) for row in rows}) > 1 and len({len(row["labels"]) for row in rows}) > 1
    assert batch["input_ids"].shape[1] != labels.shape[1]
    loss = word_kd(batch)

    # By hand: both models read the labels shifted right behind the start token, -100 read as padding.
    features = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "decoder_input_ids": shift_right(labels, decoder_start(student)),
    }
    with torch.no_grad():
        student_logits = student(**features).logits
        teacher_logits = teacher(**features).logits
    labelled = labels != -100
    assert 0 < labelled.sum() < labelled.numel()
    expected = expected_word_kd(student_logits[labelled], teacher_logits[labelled])
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    # Counting the padded target positions as well would give another number: the check is not blind to them.
    with_padding = expected_word_kd(student_logits.flatten(0, 1), teacher_logits.flatten(0, 1))
    assert abs(with_padding.item() - loss) > 1e-3 * loss

    # Padding changes nothing: more of it on both sides, or other tokens at the padded positions.
    assert word_kd(PairCollator(extra_padding=4)(rows)) == pytest.approx(loss, rel=1e-5)
    assert word_kd(PairCollator(decoder_start(student))(rows)) == pytest.approx(loss, rel=1e-6)
    noisy = PairCollator(decoder_start(student), extra_padding=2)(rows)
    generator = torch.Generator().manual_seed(7)
    noise_source = torch.randint(3, VOCAB, noisy["input_ids"].shape, generator=generator)
    noisy["input_ids"] = torch.where(noisy["attention_mask"].bool(), noisy["input_ids"], noise_source)
    noise_target = torch.randint(3, VOCAB, noisy["decoder_input_ids"].shape, generator=generator)
    noisy["decoder_input_ids"] = torch.where(noisy["labels"] == -100, noise_target, noisy["decoder_input_ids"])
    assert not torch.equal(noisy["decoder_input_ids"], shift_right(noisy["labels"], decoder_start(student)))
    assert word_kd(noisy) == pytest.approx(loss, rel=1e-5)


# ---- the teacher reads the student's decoder inputs ----


@pytest.mark.parametrize("collator_gives_decoder_inputs", [False, True], ids=["from_labels", "from_collator"])
@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_reads_the_same_decoder_input_ids_as_the_student(tmp_path, family, collator_gives_decoder_inputs):
    teacher, student = teacher_and_student(family)
    teacher_calls, student_calls = spy_on_forward(teacher), spy_on_forward(student)
    start = decoder_start(student) if collator_gives_decoder_inputs else None
    trainer = make_trainer(tmp_path, teacher, student, collator=PairCollator(start), **ALL_LOSSES)
    trainer.train()

    assert len(teacher_calls) == len(student_calls) == 2
    for teacher_call, student_call in zip(teacher_calls, student_calls, strict=True):
        assert "labels" not in teacher_call and "labels" in student_call  # hard_label_weight > 0
        assert teacher_call["output_hidden_states"] is True
        decoder_input_ids = student_call["decoder_input_ids"]
        assert torch.equal(teacher_call["decoder_input_ids"], decoder_input_ids)
        assert torch.equal(teacher_call["input_ids"], student_call["input_ids"])
        assert torch.equal(decoder_input_ids, shift_right(student_call["labels"], decoder_start(student)))
        assert (student_call["labels"] == -100).any()  # ragged targets: the shifted padding is in there too


# ---- captured scores equal eager attention ----


def _layers(model, family: str, stack: str) -> torch.nn.ModuleList:
    """The layer list of a stack, named by hand (not through nlpkd)."""
    if family == "marian":
        return getattr(model.model, stack).layers
    if family == "t5":
        return getattr(model, stack).block
    return model.encoder.encoder.layer if stack == "encoder" else model.decoder.bert.encoder.layer


def _t5_position_bias(model, stack: str, length: int) -> torch.Tensor:
    """T5's relative position bias (1, H, T, T), kept by the first layer of each stack and added by every layer."""
    with torch.no_grad():
        return getattr(model, stack).block[0].layer[0].SelfAttention.compute_bias(length, length)


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_scores_equal_eager_attention_for_every_stack(family):
    sdpa_model = BUILDERS[family]()
    eager_model = BUILDERS[family](attn_implementation="eager")
    eager_model.load_state_dict(sdpa_model.state_dict())
    input_ids = torch.tensor([[5, 17, 33, 8, 41, 12, 1], [7, 44, 9, 1, 0, 0, 0], [23, 1, 0, 0, 0, 0, 0]])
    attention_mask = (input_ids != PAD).long()
    labels = torch.tensor([[11, 25, 38, 1, -100], [6, 1, -100, -100, -100], [14, 52, 19, 30, 1]])
    decoder_input_ids = shift_right(labels, decoder_start(sdpa_model))
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)

    captures = {
        "encoder": AttentionCapture(sdpa_model, [2, 4], _layers(sdpa_model, family, "encoder")),
        "decoder": AttentionCapture(sdpa_model, [1, 2], _layers(sdpa_model, family, "decoder")),
        "cross": AttentionCapture(sdpa_model, [1, 2], _layers(sdpa_model, family, "decoder"), cross=True),
    }
    assert (captures["encoder"].causal, captures["decoder"].causal, captures["cross"].causal) == (False, True, False)
    for stack in ("encoder", "decoder"):
        assert stack_layers(sdpa_model, stack) is _layers(sdpa_model, family, stack)
    with torch.no_grad(), captures["encoder"].recording(), captures["decoder"].recording():
        with captures["cross"].recording():
            sdpa_outputs = sdpa_model(**inputs)
        eager_outputs = eager_model(**inputs, output_attentions=True)
    # SDPA and eager sum in other orders: errors are absolute, ~1e-6 at the logits' scale (~3), hence atol 1e-4.
    torch.testing.assert_close(sdpa_outputs.logits, eager_outputs.logits, rtol=1e-4, atol=1e-4)

    hidden = torch.finfo(torch.float32).min
    padded_keys = torch.zeros(3, 1, 1, 7).masked_fill(~attention_mask.bool()[:, None, None, :], hidden)
    future_keys = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), hidden)[None, None]
    real_sources = attention_mask.bool()
    checks = {  # stack: (eager attentions, additive mask, real query rows, expected score shape)
        "encoder": (eager_outputs.encoder_attentions, padded_keys, real_sources, (3, 4, 7, 7)),
        # No decoder_attention_mask: every decoder row is causal only, padded targets included.
        "decoder": (eager_outputs.decoder_attentions, future_keys, torch.ones(3, 5, dtype=torch.bool), (3, 4, 5, 5)),
        "cross": (eager_outputs.cross_attentions, padded_keys, torch.ones(3, 5, dtype=torch.bool), (3, 4, 5, 7)),
    }
    for stack, (eager_attentions, mask, rows, shape) in checks.items():
        for layer in captures[stack].layers:
            scores = captures[stack].scores(layer)
            assert scores.shape == shape and scores.dtype == torch.float32
            eager = eager_attentions[layer - 1].transpose(1, 2)[rows]  # (real rows, H, keys)
            if family == "t5" and stack != "cross":
                # T5 adds a relative position bias to self-attention scores; the capture holds Q·Kᵀ alone.
                bias = _t5_position_bias(sdpa_model, stack, scores.shape[-1])
                without_bias = torch.softmax(scores + mask, -1).transpose(1, 2)[rows]
                assert not torch.allclose(without_bias, eager, atol=1e-3), (stack, layer)
                scores = scores + bias
            probabilities = torch.softmax(scores + mask, dim=-1).transpose(1, 2)[rows]
            torch.testing.assert_close(probabilities, eager, rtol=1e-4, atol=1e-5, msg=lambda m, s=stack: f"{s}: {m}")
        # The captured layers are the requested ones, not their neighbours.
        previous = eager_attentions[layer - 2].transpose(1, 2)[rows]
        assert not torch.allclose(probabilities, previous, atol=1e-3), stack


# ---- layer-wise losses against an independent computation ----


def _eager_copy(model, family: str | None = None):
    """The same weights under eager attention, which returns its attention probabilities. A teacher is rebuilt
    (its BERT2BERT layers keep the configs they were built with); a student, built from its config, is switched."""
    if family is not None:
        copy = BUILDERS[family](attn_implementation="eager")
        copy.load_state_dict(model.state_dict())
    else:
        copy = copy_module.deepcopy(model)
        copy.set_attn_implementation("eager")
    return copy.eval()


def _expected_attention_kl(student_maps, teacher_maps, rows: torch.Tensor, layer_map: list[int]) -> torch.Tensor:
    """Mean over mapped layers of the mean over heads and real query rows of KL(p_teacher ‖ p_student) per row."""
    per_layer = []
    for student_layer, teacher_layer in enumerate(layer_map, start=1):
        p_student, p_teacher = student_maps[student_layer - 1], teacher_maps[teacher_layer - 1]
        kl = (torch.xlogy(p_teacher, p_teacher) - p_teacher * p_student.clamp_min(1e-30).log()).sum(-1)  # (B, H, T)
        per_layer.append(kl.transpose(1, 2)[rows].mean())
    return torch.stack(per_layer).mean()


# T5 is left out: its eager probabilities include the relative position bias, which the captured scores do not
# (see test_captured_scores_equal_eager_attention_for_every_stack).
@pytest.mark.parametrize("family", ["marian", "bert2bert"])
def test_layer_wise_losses_equal_a_hand_computation(tmp_path, family):
    teacher, student = teacher_and_student(family)
    trainer = make_trainer(
        tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=0.0, hidden_weight=1.0, attention_weight=1.0,
        attention_loss="kl",
    )  # fmt: skip
    trainer.model.train()
    batch = PairCollator(decoder_start(student))(rows_of(pair_dataset(seed=6), 6))
    losses = {name: value.item() for name, value in trainer.loss_components(batch).items()}

    features = {name: batch[name] for name in ("input_ids", "attention_mask", "decoder_input_ids")}
    with torch.no_grad():
        # Eager attention's probabilities already hold each model's own masks (padding, causal, source keys).
        s = _eager_copy(student)(**features, output_attentions=True, output_hidden_states=True)
        t = _eager_copy(teacher, family)(**features, output_attentions=True, output_hidden_states=True)
        projected = [
            projection(h)
            for projection, h in zip(
                trainer.model.projections, s.encoder_hidden_states + s.decoder_hidden_states, strict=True
            )
        ]
    sources, targets = batch["attention_mask"].bool(), batch["labels"] != -100
    assert not sources.all() and not targets.all()

    def hidden_mse(student_states, teacher_states, real):
        return torch.stack(
            [(a - b).pow(2).mean(-1)[real].mean() for a, b in zip(student_states, teacher_states, strict=True)]
        ).mean()

    expected = {
        "encoder_hidden_loss": hidden_mse(projected[:3], [t.encoder_hidden_states[i] for i in (0, 2, 4)], sources),
        "decoder_hidden_loss": hidden_mse(projected[3:], [t.decoder_hidden_states[i] for i in (0, 2)], targets),
        "encoder_attention_loss": _expected_attention_kl(s.encoder_attentions, t.encoder_attentions, sources, [2, 4]),
        "decoder_attention_loss": _expected_attention_kl(s.decoder_attentions, t.decoder_attentions, targets, [2]),
        "cross_attention_loss": _expected_attention_kl(s.cross_attentions, t.cross_attentions, targets, [2]),
    }
    assert losses.keys() == expected.keys()
    for name, value in expected.items():
        assert value.item() > 1e-3, name
        assert losses[name] == pytest.approx(value.item(), rel=1e-4), name


@pytest.mark.parametrize("family", FAMILIES)
def test_no_loss_changes_with_padding(tmp_path, family):
    teacher, student = teacher_and_student(family)
    trainer = make_trainer(tmp_path, teacher, student, **ALL_LOSSES)
    trainer.model.train()
    rows = rows_of(pair_dataset(seed=2), 6)

    def components(collator: PairCollator) -> dict[str, float]:
        batch = collator(rows)
        loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(batch)))
        return {"loss": loss.item(), **{name: value.item() for name, value in trainer.loss_components(batch).items()}}

    tight, padded = components(PairCollator()), components(PairCollator(extra_padding=5))
    assert len(tight) == 8
    for name, value in tight.items():
        assert value > 1e-3, name
        assert padded[name] == pytest.approx(value, rel=1e-5), name


def test_batch_counts_of_a_seq2seq_batch():
    batch = PairCollator()(
        [{"input_ids": [5, 6, 7, 1], "labels": [8, 1]}, {"input_ids": [9, 1], "labels": [4, 5, 6, 1]}]
    )
    # Sources: 4 + 2 real tokens; targets: 2 + 4 labelled positions (labels padded to 4). The trainer counts a
    # batch before it adds the decoder_input_ids, and the decoder's causal attention must not make the encoder's so.
    counts = {name: int(value) for name, value in batch_counts(batch, "token", True, seq2seq=True).items()}
    assert counts == {
        "labels": 6,
        "logits": 6,
        "tokens": 6,
        "pairs": 4 * 4 + 2 * 2,  # the encoder's pairs: bidirectional, whatever the decoder's causality
        "target_tokens": 6,
        "target_pairs": (1 + 2) + (1 + 2 + 3 + 4),  # causal pairs of real target positions
        "cross_pairs": 2 * 4 + 4 * 2,  # real target queries × real source keys
    }
    batch["decoder_input_ids"] = shift_right(batch["labels"], PAD)
    with_decoder_inputs = batch_counts(batch, "token", True, seq2seq=True)
    assert {name: int(value) for name, value in with_decoder_inputs.items()} == counts


# ---- per-stack layer maps and weights ----


def test_default_layer_maps_are_uniform_per_stack(tmp_path):
    teacher, student = teacher_and_student("marian")
    trainer = make_trainer(tmp_path, teacher, student, **ALL_LOSSES)
    assert trainer.layer_map == {"encoder": [2, 4], "decoder": [2]}
    assert term_names(trainer) == [
        "encoder_hidden_loss",
        "decoder_hidden_loss",
        "encoder_attention_loss",
        "decoder_attention_loss",
        "cross_attention_loss",
    ]
    hidden = {term.name: term.layer_map for term in trainer.hidden_terms}
    assert hidden == {"encoder_hidden_loss": [2, 4], "decoder_hidden_loss": [2]}
    captured = {
        term.name: (term.student_capture.layers, term.teacher_capture.layers) for term in trainer.attention_terms
    }
    assert captured == {
        "encoder_attention_loss": ([1, 2], [2, 4]),
        "decoder_attention_loss": ([1], [2]),
        "cross_attention_loss": ([1], [2]),
    }
    # One projection per hidden state, 16 -> 32: embeddings + 2 encoder layers, embeddings + 1 decoder layer.
    projections = trainer.model.projections
    assert len(projections) == 5
    assert all(isinstance(p, torch.nn.Linear) and p.weight.shape == (32, 16) for p in projections)


def test_explicit_layer_maps_are_used(tmp_path):
    teacher, student = teacher_and_student("t5")
    trainer = make_trainer(tmp_path, teacher, student, encoder_layer_map=[1, 3], decoder_layer_map=[1], **ALL_LOSSES)
    assert trainer.layer_map == {"encoder": [1, 3], "decoder": [1]}
    assert {term.name: term.teacher_capture.layers for term in trainer.attention_terms} == {
        "encoder_attention_loss": [1, 3],
        "decoder_attention_loss": [1],
        "cross_attention_loss": [1],
    }
    assert [term.layer_map for term in trainer.hidden_terms] == [[1, 3], [1]]


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (
            dict(encoder_layer_map=[1, 2, 3]),
            r"encoder_layer_map: layer_map has 3 entries \[1, 2, 3\] but the student has 2 layers; give one teacher "
            r"layer per student layer\.",
        ),
        (
            dict(decoder_layer_map=[3]),
            r"decoder_layer_map: layer_map \[3\] names teacher layers \[3\], but the teacher has layers 1\.\.2 ",
        ),
    ],
)
def test_bad_layer_map_names_its_stack(tmp_path, maps, message):
    teacher, student = teacher_and_student("marian")
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, teacher, student, hidden_weight=1.0, **maps)


@pytest.mark.parametrize("name", ["encoder_layer_map", "decoder_layer_map"])
def test_layer_map_entries_are_checked_by_the_arguments(tmp_path, name):
    with pytest.raises(
        ValueError, match=rf"{name} must be a non-empty list of teacher layer numbers >= 1, got \[0, 2\]\."
    ):
        make_args(tmp_path, **{name: [0, 2]})


def test_single_stack_layer_map_is_refused(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"layer_map=\[2, 4\] is for single-stack models; a seq2seq model maps each stack on its own: pass "
        r"encoder_layer_map and/or decoder_layer_map instead\.",
    ):
        make_args(tmp_path, layer_map=[2, 4])


@pytest.mark.parametrize(
    ("weights", "terms", "stacks"),
    [
        (
            dict(cross_attention_weight=0.0),
            ["encoder_hidden_loss", "decoder_hidden_loss", "encoder_attention_loss", "decoder_attention_loss"],
            {"encoder", "decoder"},
        ),
        (
            dict(encoder_weight=0.0),
            ["decoder_hidden_loss", "decoder_attention_loss", "cross_attention_loss"],
            {"decoder"},
        ),
        (  # the cross-attention follows the decoder's map, so that map stays
            dict(decoder_weight=0.0),
            ["encoder_hidden_loss", "encoder_attention_loss", "cross_attention_loss"],
            {"encoder", "decoder"},
        ),
        (
            dict(decoder_weight=0.0, cross_attention_weight=0.0),
            ["encoder_hidden_loss", "encoder_attention_loss"],
            {"encoder"},
        ),
    ],
    ids=["no_cross", "no_encoder", "no_decoder", "encoder_only"],
)
def test_zero_stack_weight_switches_its_terms_off(tmp_path, weights, terms, stacks):
    teacher, student = teacher_and_student("marian")
    trainer = make_trainer(tmp_path, teacher, student, max_steps=1, **ALL_LOSSES, **weights)
    assert term_names(trainer) == terms
    assert set(trainer.layer_map) == stacks
    trainer.train()
    (entry,) = training_logs(trainer)
    assert {name for name in entry if name.endswith("_loss")} == {"hard_loss", "logit_loss", *terms}


def test_stack_weights_scale_their_terms_in_the_total_loss(tmp_path):
    teacher, student = teacher_and_student("marian")
    stack_weights = dict(encoder_weight=0.5, decoder_weight=2.0, cross_attention_weight=3.0)
    trainer = make_trainer(tmp_path, teacher, student, **ALL_LOSSES, **stack_weights)
    trainer.train()
    for entry in training_logs(trainer):
        assert all(entry[name] > 0 for name in ("encoder_attention_loss", "cross_attention_loss")), entry
        expected = (
            0.3 * entry["hard_loss"]
            + 0.7 * entry["logit_loss"]
            + 2.0 * (0.5 * entry["encoder_hidden_loss"] + 2.0 * entry["decoder_hidden_loss"])
            + 0.5
            * (
                0.5 * entry["encoder_attention_loss"]
                + 2.0 * entry["decoder_attention_loss"]
                + 3.0 * entry["cross_attention_loss"]
            )
        )
        assert entry["loss"] == pytest.approx(expected, rel=1e-5)


def test_command_line_parsing(tmp_path):
    parser = HfArgumentParser(Seq2SeqDistillationArguments)
    flags = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "--attention_weight", "1"]
    (args,) = parser.parse_args_into_dataclasses(
        flags
        + ["--encoder_layer_map", "2", "4", "--decoder_layer_map", "1", "--encoder_weight", "0.5"]
        + ["--cross_attention_weight", "0", "--predict_with_generate", "--generation_max_length", "12"]
    )
    assert args.encoder_layer_map == [2, 4] and args.decoder_layer_map == [1]
    assert (args.encoder_weight, args.decoder_weight, args.cross_attention_weight) == (0.5, 1.0, 0.0)
    assert args.attention_weight == 1.0 and args.predict_with_generate and args.generation_max_length == 12
    with pytest.raises(ValueError, match=r"layer_map=\[2\] is for single-stack models"):
        parser.parse_args_into_dataclasses([*flags, "--layer_map", "2"])
    with pytest.raises(ValueError, match=r"decoder_weight must be >= 0, got -1\.0; set it to 0 to switch"):
        parser.parse_args_into_dataclasses([*flags, "--decoder_weight", "-1"])


# ---- gradient accumulation ----


@pytest.mark.parametrize(
    ("family", "attention_loss", "collator_gives_decoder_inputs"),
    [("marian", "mse", False), ("t5", "kl", True), ("bert2bert", "mse", False)],
    ids=["marian", "t5", "bert2bert"],
)
def test_gradient_accumulation_matches_one_big_batch(tmp_path, family, attention_loss, collator_gives_decoder_inputs):
    dataset = pair_dataset(num_rows=16, seed=3)
    start_token = decoder_start(BUILDERS[family]()) if collator_gives_decoder_inputs else None
    weights = dict(ALL_LOSSES, encoder_weight=0.5, decoder_weight=2.0, cross_attention_weight=3.0)
    trained = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        teacher, student = teacher_and_student(family)
        trainer = make_trainer(
            tmp_path / f"{batch_size}x{accumulation}",
            teacher,
            student,
            dataset=dataset,
            collator=PairCollator(start_token),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            attention_loss=attention_loss,
            **EXACT_STEPS,
            **weights,
        )
        trainer.train()
        trained.append(trainer)
    big, accumulated = trained
    assert big.state.global_step == accumulated.state.global_step == 2
    # Micro-batches of uneven sizes on both sides: a mean of per-micro-batch means would differ.
    halves = [PairCollator()([dataset[i] for i in range(start, start + 4)]) for start in (0, 4)]
    assert (halves[0]["labels"] != -100).sum() != (halves[1]["labels"] != -100).sum()
    assert halves[0]["attention_mask"].sum() != halves[1]["attention_mask"].sum()

    big_state, accumulated_state = clone_state(big.model), clone_state(accumulated.model)
    assert any(name.startswith("projections.") for name in big_state)
    # Float32 sums in another order drift the weights by ~1e-7; a mean of per-micro-batch means moves them by ~1e-3.
    assert_states_equal(accumulated_state, big_state, atol=1e-5)
    start = teacher_and_student(family)[1].state_dict()
    moved = [name for name, value in start.items() if not torch.equal(big_state[f"student.{name}"], value)]
    assert len(moved) > len(start) // 2
    for big_entry, accumulated_entry in zip(training_logs(big), training_logs(accumulated), strict=True):
        assert accumulated_entry["loss"] == pytest.approx(big_entry["loss"], rel=1e-5)
        assert accumulated_entry["cross_attention_loss"] > 0


# ---- make_student for encoder-decoders ----


def _shape_of(model, family: str) -> tuple[int, int, int]:
    """(encoder layers, decoder layers, width), read from the modules."""
    encoder, decoder = _layers(model, family, "encoder"), _layers(model, family, "decoder")
    return len(encoder), len(decoder), model.get_input_embeddings().weight.shape[1]


def _outside_layers(model, family: str) -> dict[str, torch.Tensor]:
    """The parameters outside the layer stacks: embeddings, final norms, task head."""
    inside = {id(p) for stack in ("encoder", "decoder") for p in _layers(model, family, stack).parameters()}
    return {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in inside}


@pytest.mark.parametrize("family", FAMILIES)
def test_make_student_builds_the_teachers_class_with_each_stacks_depth(family):
    teacher = BUILDERS[family]()
    student = make_student(teacher, **STUDENT_SHAPE)
    assert type(student) is type(teacher)
    assert _shape_of(teacher, family) == (4, 2, 32)
    assert _shape_of(student, family) == (2, 1, 16)
    output_embeddings = student.get_output_embeddings().weight
    assert output_embeddings.shape == teacher.get_output_embeddings().weight.shape[:1] + (16,)
    shallow = make_student(teacher, **{**STUDENT_SHAPE, "num_decoder_layers": None, "num_hidden_layers": 1})
    assert _shape_of(shallow, family)[:2] == (1, 1)  # the decoder defaults to the encoder's depth


@pytest.mark.parametrize("family", FAMILIES)
def test_make_student_teacher_layers_copies_the_uniformly_mapped_layers_of_each_stack(family):
    teacher = BUILDERS[family]()
    torch.manual_seed(1)
    student = make_student(
        teacher, **{**STUDENT_SHAPE, "hidden_size": 32, "intermediate_size": 64}, init="teacher_layers"
    )
    assert _shape_of(student, family) == (2, 1, 32)
    for stack, mapping in (("encoder", {1: 2, 2: 4}), ("decoder", {1: 2})):
        teacher_layers, student_layers = _layers(teacher, family, stack), _layers(student, family, stack)
        for student_layer, teacher_layer in mapping.items():
            teacher_state = teacher_layers[teacher_layer - 1].state_dict()
            student_state = student_layers[student_layer - 1].state_dict()
            if family == "t5" and student_layer == 1:
                # The relative position bias lives in the first layer of each stack and serves all of them.
                name = "layer.0.SelfAttention.relative_attention_bias.weight"
                assert name not in teacher_state
                torch.testing.assert_close(
                    student_state.pop(name), teacher_layers[0].state_dict()[name], rtol=0, atol=0
                )
            assert_states_equal(student_state, teacher_state)
    teacher_outside, student_outside = _outside_layers(teacher, family), _outside_layers(student, family)
    assert student_outside.keys() == teacher_outside.keys()
    assert_states_equal(student_outside, teacher_outside)
    assert any("embed" in name or "shared" in name for name in student_outside)
    # The copy gives the teacher's own function of its mapped layers: a one-layer-per-stack teacher copy is exact.
    rows = rows_of(pair_dataset(seed=5), 3)
    batch = PairCollator(decoder_start(teacher))(rows)
    batch.pop("labels")
    shallow = make_student(
        BUILDERS[family](encoder_layers=1, decoder_layers=1),
        **{**STUDENT_SHAPE, "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64},
        init="teacher_layers",
    )
    with torch.no_grad():
        torch.testing.assert_close(
            shallow.eval()(**batch).logits, BUILDERS[family](encoder_layers=1, decoder_layers=1)(**batch).logits
        )


@pytest.mark.parametrize(
    ("family", "first_mismatch"),
    [
        ("marian", r"self_attn\.k_proj\.weight \(16, 16\) vs teacher \(32, 32\)"),
        ("t5", r"layer\.0\.SelfAttention\.q\.weight \(16, 16\) vs teacher \(32, 32\)"),
        ("bert2bert", r"attention\.self\.query\.weight \(16, 16\) vs teacher \(32, 32\)"),
    ],
)
def test_make_student_teacher_layers_refuses_a_narrower_student(family, first_mismatch):
    with pytest.raises(
        ValueError,
        match=r"init='teacher_layers' copies teacher weights, so the student's widths must equal the teacher's: "
        + first_mismatch
        + r".*\. Use init='random' for a narrower student, or the teacher's widths\.",
    ):
        make_student(BUILDERS[family](), **STUDENT_SHAPE, init="teacher_layers")


# ---- saving, evaluation and prediction ----


@pytest.mark.parametrize("family", FAMILIES)
def test_save_model_writes_the_student_alone(tmp_path, family):
    teacher, student = teacher_and_student(family)
    trainer = make_trainer(
        tmp_path / "run", teacher, student, max_steps=2, save_strategy="steps", save_steps=2, **ALL_LOSSES
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))

    saved = tmp_path / "student"
    assert not (saved / PROJECTIONS_NAME).exists()
    with safe_open(str(saved / "model.safetensors"), framework="pt") as model_file:
        keys = set(model_file.keys())
    assert keys and keys <= set(student.state_dict())
    assert not any(key.startswith(("projections", "student.")) for key in keys)
    loaded = type(student).from_pretrained(str(saved))
    assert type(loaded) is type(student)
    assert_states_equal(clone_state(loaded), clone_state(student))
    assert _shape_of(loaded, family) == (2, 1, 16)
    # The checkpoint keeps the five projections (16 -> 32) next to the student, for resuming.
    with safe_open(str(tmp_path / "run" / "checkpoint-2" / PROJECTIONS_NAME), framework="pt") as projections_file:
        projection_keys = sorted(projections_file.keys())
    assert projection_keys == sorted(f"projections.{i}.{p}" for i in range(5) for p in ("bias", "weight"))


def test_evaluate_and_predict_with_generate_use_the_student(tmp_path):
    teacher, student = teacher_and_student("marian")
    dataset = pair_dataset(num_rows=6, seed=4)
    trainer = make_trainer(
        tmp_path,
        teacher,
        student,
        max_steps=1,
        per_device_eval_batch_size=6,  # one batch: eval_loss is that batch's loss
        predict_with_generate=True,
        generation_max_length=6,
        **ALL_LOSSES,
    )
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=dataset)
    predictions = trainer.predict(dataset.remove_columns("labels")).predictions

    batch = PairCollator(decoder_start(student))(rows_of(dataset, 6))
    student.eval()
    with torch.no_grad():
        own_loss = student(**batch).loss.item()
        translations = student.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_length=6
        )
    assert metrics["eval_loss"] == pytest.approx(own_loss, rel=1e-5)
    predictions = torch.as_tensor(predictions)
    # Seq2SeqTrainer pads the generated ids to the generation config's max_length with the pad token.
    assert torch.equal(predictions[:, : translations.shape[1]], translations)
    assert (predictions[:, translations.shape[1] :] == PAD).all()


# ---- pre-flight checks ----


@pytest.mark.parametrize("family", ["marian", "bert2bert"])
def test_mismatched_target_vocabulary_fails_before_training(tmp_path, family):
    teacher = BUILDERS[family]()
    if family == "marian":
        student = marian(2, 1, share_encoder_decoder_embeddings=False, decoder_vocab_size=45)
    else:
        student = bert2bert(2, 1, decoder_vocab_size=45)
    assert student.get_encoder().get_input_embeddings().weight.shape[0] == VOCAB  # only the target side differs
    with pytest.raises(
        ValueError,
        match=r"The target vocabularies differ: teacher 60 vs student 45 tokens\. Both read the same input_ids and "
        r"labels, so they need the same tokenizers; build the student with nlpkd\.make_student\(teacher\)\.",
    ):
        make_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=1.0)


def test_mismatched_source_vocabulary_fails_before_training(tmp_path):
    teacher = t5()
    student = t5(2, 1, vocab_size=VOCAB + 5)
    with pytest.raises(ValueError, match=r"The source vocabularies differ: teacher 60 vs student 65 tokens\."):
        make_trainer(tmp_path, teacher, student, hard_label_weight=0.0, logit_weight=0.0, hidden_weight=1.0)


def test_head_count_mismatch_with_attention_mse_names_the_stack(tmp_path):
    teacher, student = teacher_and_student("t5", num_attention_heads=2)
    with pytest.raises(
        ValueError,
        match=r"attention_loss='mse' compares scores head by head, but the encoder head counts differ: teacher 4 vs "
        r"student 2\. Use a student with 4 encoder heads, or attention_loss='kl' \(compares head-averaged maps\)\.",
    ):
        make_trainer(tmp_path, teacher, student, attention_weight=1.0)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=1, attention_weight=1.0, attention_loss="kl")
    trainer.train()
    (entry,) = training_logs(trainer)
    assert all(
        entry[name] > 0 for name in ("encoder_attention_loss", "decoder_attention_loss", "cross_attention_loss")
    )
