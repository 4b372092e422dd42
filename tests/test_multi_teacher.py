"""Multi-teacher distillation: the mixture loss as maths, and DistillationTrainer(teacher_model=[t1, t2, ...]) end to
end on tiny config-built BERTs (and Marian pairs), on CPU."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import PadCollator, make_classification_dataset
from test_trainer import EXACT_STEPS, NO_DROPOUT, make_args, make_student, make_teacher, spy_on_forward, training_logs

from nlpkd import DistillationArguments, DistillationTrainer, Seq2SeqDistillationTrainer
from nlpkd.losses import logit_kd_loss, teacher_mixture_logits

TEMPERATURE = 2.0
LOGITS_ONLY = dict(hard_label_weight=0.0, logit_weight=1.0)


def multi_trainer(tmp_path, teachers, student=None, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        model=student if student is not None else make_student(**NO_DROPOUT),
        teacher_model=teachers,
        args=make_args(tmp_path, temperature=TEMPERATURE, **overrides),
        train_dataset=make_classification_dataset(),
        data_collator=PadCollator(),
    )


def two_teachers():
    """Two different teachers of the student's task: 4 layers 32 wide (seed 0) and 2 layers 48 wide (seed 5),
    initialised wider than BERT's 0.02 so that their predictions differ clearly."""
    sharp = dict(initializer_range=0.5, **NO_DROPOUT)
    return make_teacher(seed=0, **sharp), make_teacher(seed=5, num_hidden_layers=2, hidden_size=48, **sharp)


def expected_mixture_kl(student, teachers, weights, temperature=TEMPERATURE) -> torch.Tensor:
    """Mean over positions of KL(Σᵢ wᵢ·softmax(tᵢ/T) ‖ softmax(s/T))·T², written out from the probabilities."""
    mixture = sum(w * F.softmax(t.double() / temperature, dim=-1) for w, t in zip(weights, teachers, strict=True))
    log_student = F.log_softmax(student.double() / temperature, dim=-1)
    return (mixture * (mixture.log() - log_student)).sum(-1).mean() * temperature**2


# ---- the mixture as maths ----


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(6, 5, generator=generator) * 3 for _ in range(3)]  # student, teacher 1, teacher 2


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.8, 0.2], [0.1, 0.9]])
def test_mixture_kl_equals_the_kl_to_the_mixed_distributions(logits, weights):
    student, *teachers = logits
    mixed = teacher_mixture_logits(teachers, weights, TEMPERATURE, "kl")
    actual = logit_kd_loss(student, mixed, TEMPERATURE, "kl")
    expected = expected_mixture_kl(student, teachers, weights)
    assert expected.item() > 0.1
    # fp32 log-softmax/logsumexp of logits of ~10 against a float64 reference: rounding of ~1e-6 relative.
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_mixture_soft_ce_is_the_cross_entropy_against_the_mixture(logits):
    student, *teachers = logits
    weights = [0.3, 0.7]
    mixture = sum(w * F.softmax(t.double() / TEMPERATURE, -1) for w, t in zip(weights, teachers, strict=True))
    expected = -(mixture * F.log_softmax(student.double() / TEMPERATURE, -1)).sum(-1).mean() * TEMPERATURE**2
    mixed = teacher_mixture_logits(teachers, weights, TEMPERATURE, "soft_ce")
    assert logit_kd_loss(student, mixed, TEMPERATURE, "soft_ce").item() == pytest.approx(
        expected.item(), rel=1e-5, abs=1e-6
    )


def test_mixture_mse_has_the_gradients_of_the_weighted_mse(logits):
    student, *teachers = logits
    weights = [0.25, 0.75]
    mine = student.clone().requires_grad_(True)
    logit_kd_loss(mine, teacher_mixture_logits(teachers, weights, TEMPERATURE, "mse"), kind="mse").backward()
    reference = student.clone().requires_grad_(True)
    sum(w * logit_kd_loss(reference, t, kind="mse") for w, t in zip(weights, teachers, strict=True)).backward()
    torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_one_teacher_given_twice_is_that_teacher(logits, kind):
    student, teacher, _ = logits
    alone = logit_kd_loss(student, teacher, TEMPERATURE, kind)
    twice = logit_kd_loss(
        student, teacher_mixture_logits([teacher, teacher], [0.5, 0.5], TEMPERATURE, kind), TEMPERATURE, kind
    )
    assert twice.item() == pytest.approx(alone.item(), rel=1e-5, abs=1e-6)


def test_a_teacher_of_weight_zero_is_left_out(logits):
    student, first, second = logits
    alone = logit_kd_loss(student, first, TEMPERATURE, "kl")
    mixed = teacher_mixture_logits([first, second], [1.0, 0.0], TEMPERATURE, "kl")
    assert logit_kd_loss(student, mixed, TEMPERATURE, "kl").item() == pytest.approx(alone.item(), rel=1e-5, abs=1e-6)


# ---- the trainer ----


def test_logit_loss_is_the_kl_to_the_weighted_mixture_of_the_teachers(tmp_path):
    teachers = two_teachers()
    trainer = multi_trainer(tmp_path, list(teachers), **LOGITS_ONLY, teacher_weights=[3.0, 1.0])
    assert trainer.teacher_weights == [0.75, 0.25]
    batch = PadCollator()([make_classification_dataset(num_rows=8, seed=3)[i] for i in range(8)])
    trainer.model.train()
    components = trainer.loss_components(batch)
    features = {name: batch[name] for name in ("input_ids", "attention_mask")}
    with torch.no_grad():
        student = trainer.model(**features).logits
        teacher_logits = [teacher(**features).logits for teacher in teachers]
    expected = expected_mixture_kl(student, teacher_logits, [0.75, 0.25])
    assert set(components) == {"logit_loss"}
    assert components["logit_loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    # Not the KL to either teacher alone, nor to their mean logits.
    for other in (*teacher_logits, 0.75 * teacher_logits[0] + 0.25 * teacher_logits[1]):
        assert abs(expected.item() - logit_kd_loss(student, other, TEMPERATURE).item()) > 1e-3


def test_one_teacher_given_twice_trains_as_that_teacher_alone(tmp_path):
    teacher = make_teacher(**NO_DROPOUT)
    # Plain SGD: Adam would turn rounding-size gradient differences of near-zero gradients into whole steps.
    settings = dict(hard_label_weight=0.5, logit_weight=0.5, **{**EXACT_STEPS, "max_steps": 3})
    alone = multi_trainer(tmp_path / "alone", teacher, make_student(**NO_DROPOUT), **settings)
    twice = multi_trainer(tmp_path / "twice", [teacher, teacher], make_student(**NO_DROPOUT), **settings)
    alone.train(), twice.train()
    for one, two in zip(training_logs(alone), training_logs(twice), strict=True):
        for name in ("loss", "hard_loss", "logit_loss"):
            # The mixture goes through a logsumexp the single teacher skips: float32 rounding of losses of ~1.
            assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name


def test_layer_terms_exist_per_teacher_with_its_own_map_weight_and_projections(tmp_path):
    teachers = two_teachers()
    losses = dict(hard_label_weight=0.2, logit_weight=0.8, hidden_weight=2.0, attention_weight=0.5)
    trainer = multi_trainer(tmp_path, list(teachers), **losses, teacher_weights=[1, 3], max_steps=2)
    assert trainer.layer_maps == [[2, 4], [1, 2]]  # each teacher's own uniform map for the 2-layer student
    assert trainer.loss_weights == {
        "hard_loss": 0.2,
        "logit_loss": 0.8,
        "hidden_loss_teacher0": 2.0 * 0.25,
        "hidden_loss_teacher1": 2.0 * 0.75,
        "attention_loss_teacher0": 0.5 * 0.25,
        "attention_loss_teacher1": 0.5 * 0.75,
    }
    assert [term.teacher_capture.layers for term in trainer.attention_terms] == [[2, 4], [1, 2]]
    # One projection per student state (embeddings + 2 layers) per teacher, to that teacher's width.
    assert [tuple(p.weight.shape) for p in trainer.model.projections] == [(32, 16)] * 3 + [(48, 16)] * 3
    trainer.train()
    for entry in training_logs(trainer):
        expected = sum(weight * entry[name] for name, weight in trainer.loss_weights.items())
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert all(entry[name] > 0 for name in trainer.loss_weights)


def test_each_teachers_hidden_term_reads_that_teacher(tmp_path):
    teachers = two_teachers()
    trainer = multi_trainer(tmp_path, list(teachers), hard_label_weight=0.0, logit_weight=0.0, hidden_weight=1.0)
    batch = PadCollator()([make_classification_dataset(num_rows=4, seed=1)[i] for i in range(4)])
    trainer.model.train()
    components = trainer.loss_components(batch)
    features = {name: batch[name] for name in ("input_ids", "attention_mask")}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        student = trainer.model.student(**features, output_hidden_states=True).hidden_states
        projections = list(trainer.model.projections)
        for index, (teacher, layer_map) in enumerate(zip(teachers, trainer.layer_maps, strict=True)):
            states = teacher(**features, output_hidden_states=True).hidden_states
            per_layer = [
                (projections[3 * index + m](student[m]) - states[g]).pow(2).mean(-1)[mask].mean()
                for m, g in enumerate([0, *layer_map])
            ]
            expected = torch.stack(per_layer).mean()
            assert components[f"hidden_loss_teacher{index}"].item() == pytest.approx(
                expected.item(), rel=1e-5, abs=1e-6
            )


def test_a_teacher_of_weight_zero_never_runs(tmp_path):
    first, second = two_teachers()
    calls = spy_on_forward(second)
    trainer = multi_trainer(tmp_path, [first, second], hidden_weight=1.0, teacher_weights=[1.0, 0.0], max_steps=2)
    assert set(trainer.loss_weights) == {"hard_loss", "logit_loss", "hidden_loss_teacher0"}
    trainer.train()
    assert calls == []


def test_every_teacher_is_frozen_and_never_trained(tmp_path):
    teachers = two_teachers()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    trainer = multi_trainer(tmp_path, list(teachers), hidden_weight=1.0, attention_weight=1.0, max_steps=2)
    trainer.train()
    for teacher, state in zip(teachers, before, strict=True):
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert trainer.teachers[0] is teachers[0] and trainer.teacher is teachers[0]


# ---- bad input ----


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, -1.0], r"teacher_weights must be a non-empty list of finite numbers >= 0"),
        ([], r"teacher_weights must be a non-empty list"),
        ([0.0, 0.0], r"teacher_weights are all 0 \(\[0.0, 0.0\]\)"),
        ([1.0, float("nan")], r"teacher_weights must be"),
    ],
)
def test_bad_teacher_weights_are_refused_by_the_arguments(tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", teacher_weights=weights)


def test_teacher_weights_must_match_the_teachers(tmp_path):
    with pytest.raises(ValueError, match=r"teacher_weights=\[1.0, 2.0, 3.0\] has 3 entries, but teacher_model has 2"):
        multi_trainer(tmp_path, list(two_teachers()), teacher_weights=[1.0, 2.0, 3.0])


def test_a_mismatched_teacher_is_named(tmp_path):
    other_vocabulary = make_teacher(vocab_size=77)
    with pytest.raises(ValueError, match=r"^teacher_model\[1\]: .*vocab"):
        multi_trainer(tmp_path, [make_teacher(), other_vocabulary])


def test_a_teacher_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"teacher_model\[1\] must be a loaded model, got str"):
        multi_trainer(tmp_path, [make_teacher(), "bert-base-uncased"])


# ---- the teacher cache and the card ----


def test_the_cache_holds_the_mixture_and_is_keyed_by_every_teacher(tmp_path):
    teachers = two_teachers()
    cache = tmp_path / "cache"
    # Every class kept (top_k >= 2): the cached loss equals the online one up to the cache's float16.
    settings = dict(**LOGITS_ONLY, teacher_logits_top_k=2, max_steps=2)
    online = multi_trainer(tmp_path / "online", list(teachers), **settings, teacher_weights=[3, 1])
    cached = multi_trainer(
        tmp_path / "cached", list(teachers), **settings, teacher_weights=[3, 1], teacher_logits_cache_dir=str(cache)
    )
    assert cached.teacher is None and len(os.listdir(cache)) == 1
    batch = cached.data_collator([cached.train_dataset[i] for i in range(8)])  # with the rows' cache numbers
    online.model.train(), cached.model.train()
    cached_loss = cached.loss_components(batch)["logit_loss"].item()
    batch.pop("teacher_cache_row")
    # float16 teacher logits of ~1: a relative rounding of 5e-4 per logit.
    assert cached_loss == pytest.approx(online.loss_components(batch)["logit_loss"].item(), rel=2e-3, abs=1e-4)
    # Other weights, or one of the teachers alone, are other caches.
    multi_trainer(
        tmp_path / "w", list(teachers), **settings, teacher_weights=[1, 1], teacher_logits_cache_dir=str(cache)
    )
    multi_trainer(tmp_path / "one", teachers[0], **settings, teacher_logits_cache_dir=str(cache))
    assert len(os.listdir(cache)) == 3


def test_the_card_names_every_teacher_with_its_weight(tmp_path):
    teachers = two_teachers()
    teachers[0].name_or_path, teachers[1].name_or_path = "org/teacher-a", "org/teacher-b"
    trainer = multi_trainer(tmp_path, list(teachers), teacher_weights=[1, 3], hidden_weight=1.0, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    card = (tmp_path / "student" / "README.md").read_text()
    assert "base_model: org/teacher-a\n" in card
    assert "teachers (weight; layer map): org/teacher-a (0.25; [2, 4]), org/teacher-b (0.75; [1, 2])" in card


# ---- seq2seq ----


def test_seq2seq_students_learn_from_several_teachers(tmp_path):
    from test_seq2seq import PairCollator, marian, pair_dataset
    from test_seq2seq import make_args as seq2seq_args

    first, second = marian(4, 2, seed=0), marian(2, 2, seed=1)
    student = marian(2, 1, seed=2)
    trainer = Seq2SeqDistillationTrainer(
        model=student,
        teacher_model=[first, second],
        args=seq2seq_args(tmp_path, hidden_weight=1.0, attention_weight=1.0, max_steps=2),
        train_dataset=pair_dataset(),
        data_collator=PairCollator(),
    )
    assert trainer.layer_maps == [{"encoder": [2, 4], "decoder": [2]}, {"encoder": [1, 2], "decoder": [2]}]
    names = {term.name for term in trainer.terms}
    assert {"encoder_hidden_loss_teacher0", "cross_attention_loss_teacher1", "logit_loss"} <= names
    trainer.train()
    for entry in training_logs(trainer):
        expected = sum(weight * entry[name] for name, weight in trainer.loss_weights.items())
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
