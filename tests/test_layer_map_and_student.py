"""TinyBERT's uniform layer map and the student builder."""

import pytest
import torch
from conftest import VOCAB_SIZE, tiny_bert_config
from transformers import BertForMaskedLM, BertForSequenceClassification

from nlpkd import make_student
from nlpkd.layer_map import resolve_layer_map, uniform_layer_map

# ---- layer map ----


@pytest.mark.parametrize(
    ("num_student", "num_teacher", "expected"),
    [
        (4, 6, [1, 3, 4, 6]),
        (2, 4, [2, 4]),
        (4, 12, [3, 6, 9, 12]),
        (3, 12, [4, 8, 12]),
        (1, 6, [6]),
        (5, 5, [1, 2, 3, 4, 5]),
    ],
)
def test_uniform_layer_map(num_student, num_teacher, expected):
    assert uniform_layer_map(num_student, num_teacher) == expected


@pytest.mark.parametrize("depth", [1, 3, 6, 12])
def test_uniform_map_of_equal_depths_is_identity(depth):
    assert uniform_layer_map(depth, depth) == list(range(1, depth + 1))


def test_resolve_layer_map_defaults_to_uniform_and_keeps_a_valid_map():
    assert resolve_layer_map(None, 4, 6) == [1, 3, 4, 6]
    given = [2, 2, 5, 6]
    resolved = resolve_layer_map(given, 4, 6)
    assert resolved == given and resolved is not given


def test_resolve_layer_map_wrong_length():
    with pytest.raises(
        ValueError, match=r"layer_map has 3 entries \[1, 2, 3\] but the student has 2 layers; give one"
    ):
        resolve_layer_map([1, 2, 3], 2, 4)


def test_resolve_layer_map_out_of_range():
    with pytest.raises(
        ValueError, match=r"layer_map \[2, 5\] names teacher layers \[5\], but the teacher has layers 1..4"
    ):
        resolve_layer_map([2, 5], 2, 4)
    with pytest.raises(ValueError, match=r"names teacher layers \[0\]"):
        resolve_layer_map([0, 4], 2, 4)


def test_resolve_layer_map_student_deeper_than_teacher():
    with pytest.raises(ValueError, match=r"The student has more layers \(6\) than the teacher \(4\)"):
        resolve_layer_map(None, 6, 4)


# ---- make_student ----


def test_make_student_default_shape_is_tinybert4():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(
        tiny_bert_config(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    )
    student = make_student(teacher)
    config = student.config
    assert type(student) is BertForSequenceClassification
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        4,
        312,
        12,
        1200,
    )
    assert len(student.bert.encoder.layer) == 4
    assert student.bert.embeddings.word_embeddings.weight.shape == (VOCAB_SIZE, 312)
    assert student.classifier.weight.shape == (2, 312)
    assert config.architectures == ["BertForSequenceClassification"]
    # The teacher's config is copied, not shared.
    assert teacher.config.hidden_size == 384 and teacher.config.num_hidden_layers == 6


def test_make_student_keeps_class_labels_and_vocabulary(teacher):
    student = make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=20)
    assert type(student) is type(teacher)
    assert student.config.vocab_size == teacher.config.vocab_size == VOCAB_SIZE
    assert student.config.num_labels == 2
    assert student.config.id2label == {0: "negative", 1: "positive"}
    assert student.config.label2id == {"negative": 0, "positive": 1}
    assert student.config.max_position_embeddings == teacher.config.max_position_embeddings
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 3


def test_make_student_of_a_masked_lm():
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_bert_config())
    student = make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=20)
    assert type(student) is BertForMaskedLM
    logits = student(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, VOCAB_SIZE)


def test_make_student_with_teacher_layers_copies_the_mapped_layers(teacher):
    student = make_student(
        teacher,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        init="teacher_layers",
    )
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    # Student layer m learns from teacher layer m·4/2: layers 0 and 1 are copies of teacher layers 1 and 3 (0-based).
    for student_index, teacher_index in ((0, 1), (1, 3)):
        prefix, teacher_prefix = f"bert.encoder.layer.{student_index}.", f"bert.encoder.layer.{teacher_index}."
        layer_keys = [key for key in student_state if key.startswith(prefix)]
        assert len(layer_keys) >= 16
        for key in layer_keys:
            torch.testing.assert_close(
                student_state[key], teacher_state[teacher_prefix + key.removeprefix(prefix)], rtol=0, atol=0
            )
        # ...and differ from the teacher layers that were skipped.
        skipped = teacher_state[f"bert.encoder.layer.{teacher_index - 1}.attention.self.query.weight"]
        assert not torch.equal(student_state[prefix + "attention.self.query.weight"], skipped)
    outside = [key for key in student_state if not key.startswith("bert.encoder.layer.")]
    assert any(key.startswith("bert.embeddings.") for key in outside)
    assert "classifier.weight" in outside and "bert.pooler.dense.weight" in outside
    for key in outside:
        torch.testing.assert_close(student_state[key], teacher_state[key], rtol=0, atol=0)


def test_make_student_with_teacher_layers_predicts_like_a_truncated_teacher(teacher):
    # With every layer copied (M = N), the student is the teacher.
    student = make_student(
        teacher,
        num_hidden_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        init="teacher_layers",
    ).eval()
    input_ids = torch.tensor([[5, 17, 42, 8, 3]])
    torch.testing.assert_close(student(input_ids=input_ids).logits, teacher(input_ids=input_ids).logits)


def test_make_student_random_init_does_not_copy(teacher):
    student = make_student(teacher, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=37)
    assert not torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (dict(hidden_size=16, intermediate_size=37), r"hidden_size 16 vs teacher 32\. Use init='random'"),
        (dict(hidden_size=32, intermediate_size=20), r"intermediate_size 20 vs teacher 37\. Use init='random'"),
    ],
)
def test_make_student_with_teacher_layers_needs_the_teachers_widths(teacher, shape, message):
    with pytest.raises(
        ValueError, match=r"init='teacher_layers' copies teacher weights, so the student's widths must"
    ):
        make_student(teacher, num_hidden_layers=2, num_attention_heads=4, init="teacher_layers", **shape)
    with pytest.raises(ValueError, match=message):
        make_student(teacher, num_hidden_layers=2, num_attention_heads=4, init="teacher_layers", **shape)


def test_make_student_rejects_unknown_init(teacher):
    expected = r"init must be one of \('random', 'teacher_layers', 'pruned', 'auto'\), got 'teacher'\."
    with pytest.raises(ValueError, match=expected):
        make_student(teacher, init="teacher")


def test_make_student_rejects_width_not_divisible_by_heads(teacher):
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be a multiple of num_attention_heads \(4\)"):
        make_student(teacher, hidden_size=30, num_attention_heads=4)


@pytest.mark.parametrize("name", ["num_hidden_layers", "num_attention_heads", "num_decoder_layers"])
def test_make_student_rejects_a_shape_below_one(teacher, name):
    # num_hidden_layers=0 failed inside the layer copy with "zip() argument 2 is longer than argument 1".
    with pytest.raises(ValueError, match=rf"{name} must be >= 1, got 0\."):
        make_student(teacher, **{name: 0})
