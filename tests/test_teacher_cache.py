"""The teacher-logits cache: the sparse loss as maths, fingerprints and rebuilds, corrupt folders, and training from
the cache without the teacher (shuffled, over epochs, shared by students) on tiny config-built models."""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import VOCAB_SIZE, PadCollator, make_classification_dataset, tiny_bert_config
from datasets import Dataset
from test_token_level_kd import gpt2_config
from test_trainer import make_args, make_student, make_teacher, spy_on_forward, training_logs
from transformers import BertForMaskedLM, BertForTokenClassification, GPT2LMHeadModel

from nlpkd import DistillationArguments, DistillationTrainer, Seq2SeqDistillationArguments
from nlpkd.fingerprint import teacher_digest
from nlpkd.losses import logit_kd_loss, sparse_logit_kd_loss
from nlpkd.teacher_cache import CACHE_ROW, METADATA_NAME, TeacherCacheError, load_or_build_teacher_cache

LOGIT_ONLY = dict(hard_label_weight=0.0, logit_weight=1.0)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def top_k_of(logits: torch.Tensor, k: int):
    """(values, indices, rest logsumexp) of full logits, as the cache stores them but in fp32."""
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return values, indices, rest


def cached_trainer(tmp_path, teacher, student, train_dataset=None, cache_dir=None, **overrides):
    settings = dict(LOGIT_ONLY, teacher_logits_cache_dir=str(cache_dir or tmp_path / "cache"))
    settings.update(overrides)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path / "out", **settings),
        train_dataset=train_dataset if train_dataset is not None else make_classification_dataset(),
        data_collator=PadCollator(),
    )


def cache_folders(cache_dir) -> list[str]:
    return sorted(name for name in os.listdir(cache_dir) if not name.startswith("."))


# ---- the sparse loss as maths ----


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, 7, generator=generator) * 2, torch.randn(3, 5, 7, generator=generator) * 2


@pytest.mark.parametrize("kind", ["kl", "soft_ce"])
def test_sparse_loss_with_every_class_equals_online_kd(logits, kind):
    student, teacher = logits
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    student_online = student.clone().requires_grad_(True)
    student_sparse = student.clone().requires_grad_(True)
    online = logit_kd_loss(student_online, teacher, 2.0, kind, mask)
    sparse = sparse_logit_kd_loss(student_sparse, *top_k_of(teacher, 7), 2.0, kind, mask)
    # Sums over the classes in the top-k's order, of terms adding up to ~9 (× T² = 4): a few ulp of ~10, absolute.
    assert sparse.item() == pytest.approx(online.item(), rel=1e-6, abs=1e-5)
    online.backward()
    sparse.backward()
    torch.testing.assert_close(student_sparse.grad, student_online.grad, rtol=0, atol=1e-6)


def _bucket_kl(student: torch.Tensor, teacher: torch.Tensor, k: int, temperature: float) -> float:
    """The documented choice, computed another way in float64: the full softmax at T = 1 gives top-k probabilities
    and 1 − their sum; those k + 1 probabilities are tempered as p^(1/T) renormalised."""
    student, teacher = student.double(), teacher.double()
    indices = teacher.topk(k, dim=-1).indices

    def buckets(logits):
        probs = logits.softmax(-1)
        top = probs.gather(-1, indices)
        tempered = torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1) ** (1 / temperature)
        return tempered / tempered.sum(-1, keepdim=True)

    p_teacher, p_student = buckets(teacher), buckets(student)
    return float((p_teacher * (p_teacher / p_student).log()).sum(-1).mean()) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_loss_with_fewer_classes_keeps_the_rest_as_one_bucket(logits, temperature):
    student, teacher = logits
    loss = sparse_logit_kd_loss(student, *top_k_of(teacher, 3), temperature)
    assert loss.item() == pytest.approx(_bucket_kl(student, teacher, 3, temperature), rel=1e-5)
    # Not the same as online KD: the rest bucket hides how the teacher spreads its tail.
    assert abs(loss.item() - logit_kd_loss(student, teacher, temperature).item()) > 1e-3


def test_sparse_loss_of_identical_logits_is_zero_at_any_temperature(logits):
    student, _ = logits
    for temperature in (1.0, 3.0):
        loss = sparse_logit_kd_loss(student, *top_k_of(student.clone(), 2), temperature)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_sparse_loss_is_t_squared_scaled_masked_and_fp32(logits):
    student, teacher = logits
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, :2] = True
    values, indices, rest = top_k_of(teacher, 3)
    masked = sparse_logit_kd_loss(student, values, indices, rest, 2.0, mask=mask)
    assert masked.item() == pytest.approx(
        sparse_logit_kd_loss(student[0, :2], values[0, :2], indices[0, :2], rest[0, :2], 2.0).item(), rel=1e-6
    )
    # T² scaling: the bucket KL at T, times T².
    assert masked.item() == pytest.approx(_bucket_kl(student[0, :2], teacher[0, :2], 3, 2.0), rel=1e-5)
    # float16 cache values and a bfloat16 student are computed in fp32.
    low = sparse_logit_kd_loss(student.bfloat16(), values.half(), indices.int(), rest.half(), 2.0)
    assert low.dtype == torch.float32
    assert torch.isfinite(sparse_logit_kd_loss(student, values, indices, rest, 2.0, mask=torch.zeros_like(mask)))


def test_sparse_loss_keeps_a_tiny_student_rest_mass_exact():
    # The student puts ~e^-100 outside the top-2: 1 − Σ top-2 would round to 0 and log(0) to −inf.
    student = torch.tensor([[100.0, 100.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss = sparse_logit_kd_loss(student, *top_k_of(teacher, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # By hand: the student's buckets are log(1/2) twice and log(2e^0) − log(2e^100) = −100 for the rest.
    top, rest = math.e / (2 * math.e + 2), 2 / (2 * math.e + 2)
    expected = 2 * top * (math.log(top) - math.log(0.5)) + rest * (math.log(rest) + 100)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sparse_loss_refuses_mse():
    with pytest.raises(ValueError, match="'mse' compares every raw logit"):
        sparse_logit_kd_loss(torch.zeros(2, 3), *top_k_of(torch.zeros(2, 3), 2), kind="mse")


# ---- arguments ----


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(teacher_logits_top_k=0), "teacher_logits_top_k must be an integer >= 1, got 0"),
        (dict(teacher_logits_cache_dir="c", hidden_weight=1.0), "Set hidden_weight=0, attention_weight=0 and rel"),
        (dict(teacher_logits_cache_dir="c", attention_weight=0.5), "'attention_weight': 0.5"),
        (dict(teacher_logits_cache_dir="c", logit_loss="mse"), "logit_loss='mse' compares every raw logit"),
        (dict(teacher_logits_cache_dir="c", logit_weight=0.0), "logit_weight=0: no loss reads"),
    ],
)
def test_cache_settings_are_validated(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), report_to="none", **settings)


def test_seq2seq_arguments_refuse_the_cache(tmp_path):
    with pytest.raises(ValueError, match="a seq2seq teacher runs online"):
        Seq2SeqDistillationArguments(output_dir=str(tmp_path), report_to="none", teacher_logits_cache_dir="c")


# ---- building, fingerprints, rebuilds ----


def build(cache_dir, teacher, dataset, top_k=2, collator=None, level="sequence"):
    return load_or_build_teacher_cache(
        str(cache_dir), teacher, dataset, collator or PadCollator(), level, top_k, ["labels"], batch_size=8
    )


def test_cache_holds_the_teachers_top_k_in_compact_types(tmp_path, teacher):
    dataset = make_classification_dataset(num_rows=10)
    cache = build(tmp_path, teacher, dataset)
    (folder,) = cache_folders(tmp_path)
    metadata = json.loads((tmp_path / folder / METADATA_NAME).read_text())
    assert metadata["key"] == folder and metadata["num_rows"] == 10 and metadata["settings"]["top_k"] == 2
    assert str(cache.rows.features["values"].feature.dtype) == "float16"
    assert str(cache.rows.features["indices"].feature.dtype) == "int16"
    rows = [7, 2, 9]
    values, indices, rest, counts = cache.lookup(rows)
    assert counts.tolist() == [1, 1, 1] and values.dtype == torch.float16
    with torch.no_grad():
        batch = PadCollator()([dataset[row] for row in rows])
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = logits.topk(2, dim=-1)
    torch.testing.assert_close(values.float(), expected.values, rtol=0, atol=2e-3)
    # Exact, here and below: the teachers' neighbouring logits lie >= 1e-3 apart, far above float32 noise (~1e-7).
    assert torch.equal(indices, expected.indices)
    assert torch.isneginf(rest).all()  # k = both classes: nothing left over


def test_same_teacher_data_and_k_load_without_running_the_teacher(tmp_path, teacher):
    dataset = make_classification_dataset(num_rows=8)
    build(tmp_path, teacher, dataset)
    calls = spy_on_forward(teacher)
    build(tmp_path, copy.deepcopy(teacher), make_classification_dataset(num_rows=8))  # equal, not the same objects
    assert calls == [] and len(cache_folders(tmp_path)) == 1


def test_a_teacher_trained_here_and_loaded_back_share_a_digest(tmp_path, teacher):
    """The next run loads the teacher this run trained; its caches must still be found. Training turns `use_cache`
    off, saving writes `dtype`: run-time switches that are not the teacher's identity."""
    teacher.config.use_cache = False
    teacher.config.dtype = None
    teacher.save_pretrained(tmp_path / "teacher")
    loaded = type(teacher).from_pretrained(tmp_path / "teacher")
    assert loaded.config.to_dict() != teacher.config.to_dict()  # the trap this guards against
    assert teacher_digest(loaded) == teacher_digest(teacher)
    loaded.config.hidden_act = "relu"  # but a config field that changes the outputs is part of it
    assert teacher_digest(loaded) != teacher_digest(teacher)


@pytest.mark.parametrize("change", ["teacher", "data", "k"])
def test_a_changed_teacher_data_or_k_rebuilds(tmp_path, teacher, change):
    dataset = make_classification_dataset(num_rows=8)
    build(tmp_path, teacher, dataset)
    top_k = 2
    if change == "teacher":
        with torch.no_grad():
            teacher.classifier.bias += 0.5
    elif change == "data":
        dataset = make_classification_dataset(num_rows=8, seed=1)
    else:
        top_k = 1
    calls = spy_on_forward(teacher)
    cache = build(tmp_path, teacher, dataset, top_k=top_k)
    assert len(calls) == 1  # 8 rows, batch 8: built again
    assert len(cache_folders(tmp_path)) == 2
    values, indices, rest, _ = cache.lookup([3])
    assert values.shape == (1, top_k)
    if change == "k":  # one class kept, the other is the rest bucket
        assert torch.isfinite(rest).all()


def _damage(folder, how: str) -> None:
    arrow = next(name for name in os.listdir(folder) if name.endswith(".arrow"))
    if how == "missing metadata":
        os.remove(folder / METADATA_NAME)
    elif how == "garbled metadata":
        (folder / METADATA_NAME).write_text("{not json")
    elif how == "missing data":
        os.remove(folder / arrow)
    elif how == "garbled data":
        data = bytearray((folder / arrow).read_bytes())
        data[-40] ^= 0xFF
        (folder / arrow).write_bytes(bytes(data))
    else:
        metadata = json.loads((folder / METADATA_NAME).read_text())
        if how == "other fingerprint":
            metadata["key"] = "0123456789abcdef"
        else:  # wrong row count
            metadata["num_rows"] += 1
        (folder / METADATA_NAME).write_text(json.dumps(metadata))


@pytest.mark.parametrize(
    "how, reason",
    [
        ("missing metadata", "teacher_cache.json is missing"),
        ("garbled metadata", "is not valid JSON"),
        ("missing data", r"data-00000-of-00001\.arrow is missing"),
        ("garbled data", "does not match the checksum"),
        ("other fingerprint", "is for fingerprint '0123456789abcdef'"),
        ("wrong row count", "its metadata says 9, but the training set has 8"),
    ],
)
def test_a_corrupt_cache_is_an_error_never_used(tmp_path, teacher, how, reason):
    dataset = make_classification_dataset(num_rows=8)
    build(tmp_path, teacher, dataset)
    (folder,) = cache_folders(tmp_path)
    _damage(tmp_path / folder, how)
    calls = spy_on_forward(teacher)
    with pytest.raises(TeacherCacheError, match=f"is corrupt: .*{reason}.*delete that folder"):
        build(tmp_path, teacher, dataset)
    assert calls == []


# ---- training from the cache ----


def test_training_from_the_cache_never_runs_the_teacher(tmp_path, teacher, student):
    calls = spy_on_forward(teacher)
    trainer = cached_trainer(tmp_path, teacher, student, max_steps=3)
    assert len(calls) == 8  # the build: 32 rows in batches of 4 (per_device_eval_batch_size)
    assert trainer.teacher is None
    teacher.forward = None  # any call during training would fail
    trainer.train()
    logs = training_logs(trainer)
    assert len(logs) == 3 and all(entry["logit_loss"] > 0 for entry in logs)


def test_shuffled_rows_over_two_epochs_and_length_groups_find_their_own_logits(tmp_path, teacher, student):
    reference = copy.deepcopy(teacher)
    # An unused column: remove_unused_columns must drop it but keep the row numbers.
    dataset = make_classification_dataset(num_rows=24).add_column("note", ["x"] * 24)
    trainer = cached_trainer(
        tmp_path,
        teacher,
        student,
        dataset,
        max_steps=-1,
        num_train_epochs=2,
        train_sampling_strategy="group_by_length",
    )
    seen, original = [], trainer.compute_loss

    def checking_compute_loss(model, inputs, **kwargs):
        rows = inputs[CACHE_ROW]
        with torch.no_grad():
            logits = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        values, indices, _, _ = trainer.teacher_cache.lookup(rows.tolist())
        torch.testing.assert_close(values.float(), logits.topk(2, dim=-1).values, rtol=0, atol=2e-3)
        assert torch.equal(indices, logits.topk(2, dim=-1).indices)
        assert "note" not in inputs
        seen.extend(rows.tolist())
        return original(model, inputs, **kwargs)

    trainer.compute_loss = checking_compute_loss
    trainer.train()
    assert sorted(seen) == sorted(list(range(24)) * 2)
    assert seen[:24] != list(range(24))  # shuffled


def test_with_every_class_cached_the_loss_equals_online_kd(tmp_path):
    teacher = make_teacher(**NO_DROPOUT)
    with torch.no_grad():  # a confident teacher: a KL well above the float16 rounding of its cached logits
        teacher.classifier.weight.normal_(std=1.0)
    online = DistillationTrainer(
        model=make_student(**NO_DROPOUT),
        teacher_model=copy.deepcopy(teacher),
        args=make_args(tmp_path / "online", max_steps=3, **LOGIT_ONLY),
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )
    online.train()
    cached = cached_trainer(tmp_path, teacher, make_student(**NO_DROPOUT), max_steps=3)
    cached.train()
    for with_cache, without in zip(training_logs(cached), training_logs(online), strict=True):
        assert with_cache["logit_loss"] > 0.01
        # The cache rounds the logits to float16 (2^-11 of each): the KL moves by ~2e-5, by ~1e-4 should float32
        # noise flip one rounding. Rows looked up wrongly, or a wrong rest bucket, move it by far more.
        assert with_cache["logit_loss"] == pytest.approx(without["logit_loss"], rel=1e-3, abs=5e-4)


def test_two_students_share_one_cache(tmp_path, teacher):
    first = cached_trainer(tmp_path / "a", teacher, make_student(seed=1), cache_dir=tmp_path / "cache", max_steps=1)
    calls = spy_on_forward(teacher)
    second = cached_trainer(
        tmp_path / "b", teacher, make_student(seed=2, hidden_size=24), cache_dir=tmp_path / "cache", max_steps=1
    )
    assert calls == [] and len(cache_folders(tmp_path / "cache")) == 1
    assert second.teacher_cache.path == first.teacher_cache.path
    first.train()
    second.train()


class LabelPadCollator(PadCollator):
    """PadCollator for per-token labels, padded with -100."""

    def __call__(self, rows):
        batch = super().__call__([{k: v for k, v in row.items() if k != "labels"} for row in rows])
        length = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([row["labels"] + [-100] * (length - len(row["labels"])) for row in rows])
        return batch


def token_dataset(num_rows: int = 12, num_labels: int = 3) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(num_rows):
        length = int(torch.randint(3, 9, (1,), generator=generator))
        rows["input_ids"].append(torch.randint(5, VOCAB_SIZE, (length,), generator=generator).tolist())
        rows["attention_mask"].append([1] * length)
        labels = torch.randint(0, num_labels, (length,), generator=generator)
        labels[torch.rand(length, generator=generator) < 0.3] = -100  # e.g. word pieces after the first
        rows["labels"].append(labels.tolist())
    return Dataset.from_dict(rows)


def test_token_classification_caches_labelled_positions_only(tmp_path):
    torch.manual_seed(0)
    teacher = BertForTokenClassification(tiny_bert_config(num_labels=3, id2label=None, label2id=None, **NO_DROPOUT))
    dataset = token_dataset()
    cache = build(tmp_path, teacher.eval(), dataset, top_k=3, collator=LabelPadCollator(), level="token")
    rows = [5, 0, 11]
    values, indices, _, counts = cache.lookup(rows)
    batch = LabelPadCollator()([dataset[row] for row in rows])
    labelled = batch["labels"] != -100
    assert counts.tolist() == labelled.sum(1).tolist()
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[labelled]
    torch.testing.assert_close(values.float(), logits.topk(3, dim=-1).values, rtol=0, atol=2e-3)
    assert torch.equal(indices, logits.topk(3, dim=-1).indices)


def test_causal_lm_trains_from_a_top_k_cache_of_next_token_logits(tmp_path):
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(gpt2_config()).eval()
    torch.manual_seed(1)
    student = GPT2LMHeadModel(gpt2_config(n_layer=2, n_embd=16))
    dataset = token_dataset(num_rows=8, num_labels=VOCAB_SIZE)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_path / "out",
            max_steps=2,
            teacher_logits_cache_dir=str(tmp_path / "cache"),
            teacher_logits_top_k=8,
            **LOGIT_ONLY,
        ),
        train_dataset=dataset,
        data_collator=LabelPadCollator(),
    )
    values, indices, rest, counts = trainer.teacher_cache.lookup([3])
    row = dataset[3]
    next_labelled = torch.tensor(row["labels"][1:]) != -100
    assert values.shape == (int(next_labelled.sum()), 8) == (counts.item(), 8)
    assert torch.isfinite(rest).all()
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1][next_labelled]
    torch.testing.assert_close(values.float(), logits.topk(8, dim=-1).values, rtol=0, atol=2e-3)
    teacher.forward = None
    trainer.train()
    assert all(np.isfinite(entry["logit_loss"]) for entry in training_logs(trainer))


def test_masked_lm_cannot_use_the_cache(tmp_path):
    torch.manual_seed(0)
    teacher, student = BertForMaskedLM(tiny_bert_config()), BertForMaskedLM(tiny_bert_config())
    with pytest.raises(ValueError, match="is a masked LM: its collator draws new masked positions every epoch"):
        cached_trainer(tmp_path, teacher, student, token_dataset())


def test_a_batch_without_cache_rows_or_labels_says_the_cache_has_no_logits_for_it(tmp_path, teacher, student):
    trainer = cached_trainer(tmp_path, teacher, student, max_steps=1)
    batch = PadCollator()([make_classification_dataset(num_rows=2)[i] for i in range(2)])
    del batch["labels"]
    with pytest.raises(ValueError, match="only the training set is cached"):
        trainer.compute_loss(trainer.model.eval(), batch)
