"""Pruned initialisation (nlpkd.pruning, make_student(init="pruned")) on tiny config-built BERTs."""

import math

import pytest
import torch
from conftest import PadCollator, make_classification_dataset, tiny_bert_config
from transformers import BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from nlpkd import make_student
from nlpkd.pruning import importance

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def teacher() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(initializer_range=0.2, **NO_DROPOUT)).eval()


@pytest.fixture
def batches() -> list[dict]:
    rows = make_classification_dataset(num_rows=16, seed=2)
    return [PadCollator()([rows[i] for i in range(start, start + 8)]) for start in (0, 8)]


def features(batch: dict) -> dict:
    return {name: batch[name] for name in ("input_ids", "attention_mask")}


def test_the_teachers_own_shape_is_the_teacher(teacher, batches):
    shape = dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, intermediate_size=37)
    student = make_student(teacher, **shape, init="pruned", calibration_data=batches).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(**features(batches[0])).logits, teacher(**features(batches[0])).logits)


def test_fewer_layers_of_the_same_width_are_the_uniformly_mapped_teacher_layers(teacher, batches):
    shape = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=37)
    pruned = make_student(teacher, **shape, init="pruned", calibration_data=batches)
    copied = make_student(teacher, **shape, init="teacher_layers")
    copied_state = copied.state_dict()
    for name, value in pruned.state_dict().items():
        torch.testing.assert_close(value, copied_state[name], rtol=0, atol=0, msg=name)


def test_a_narrower_student_keeps_the_most_active_channels_heads_and_neurons(teacher, batches, tmp_path):
    shape = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=20)
    student = make_student(teacher, **shape, init="pruned", calibration_data=batches).eval()
    # Hidden channels: mean |activation| over the real tokens of every hidden state, computed here independently.
    with torch.no_grad():
        states = [teacher(**features(b), output_hidden_states=True).hidden_states for b in batches]
    real = torch.cat([b["attention_mask"].bool().reshape(-1) for b in batches])
    per_channel = sum(
        torch.cat([s[i].reshape(-1, 32) for s in states])[real].abs().mean(0) for i in range(len(states[0]))
    )
    kept = per_channel.topk(16).indices.sort().values
    word = teacher.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight, word[:, kept], rtol=0, atol=0)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight[:, kept], rtol=0, atol=0)
    # Student layer 2 starts from teacher layer 4 (the uniform map): its FFN keeps teacher neurons, in order.
    ffn = importance(teacher, batches, [4])[("ffn", 4)].topk(20).indices.sort().values
    teacher_ffn = teacher.bert.encoder.layer[3].intermediate.dense
    torch.testing.assert_close(
        student.bert.encoder.layer[1].intermediate.dense.weight, teacher_ffn.weight[ffn][:, kept], rtol=0, atol=0
    )
    # Head width 8 of 8 with 2 of 4 heads: whole heads, queries unscaled; the student is a plain saveable model.
    query = student.bert.encoder.layer[1].attention.self.query.weight
    teacher_query = teacher.bert.encoder.layer[3].attention.self.query.weight[:, kept].view(4, 8, 16)
    assert any(torch.equal(query[:8], teacher_query[head]) for head in range(4))
    student.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**features(batches[0])).logits, student(**features(batches[0])).logits)


def test_narrower_heads_keep_the_teachers_score_scale(teacher, batches):
    # 4 heads of width 4 from the teacher's 4 heads of width 8: queries times √(4/8).
    shape = dict(num_hidden_layers=4, hidden_size=16, num_attention_heads=4, intermediate_size=37)
    student = make_student(teacher, **shape, init="pruned", calibration_data=batches)
    layer, teacher_layer = student.bert.encoder.layer[0].attention.self, teacher.bert.encoder.layer[0].attention.self
    scores = importance(teacher, batches, [1])
    query_key = (scores[("query", 1)] * scores[("key", 1)]).view(4, 8)
    rows = torch.cat([head * 8 + query_key[head].topk(4).indices.sort().values for head in range(4)])
    columns = scores[("hidden",)].topk(16).indices.sort().values  # the kept hidden channels
    expected = teacher_layer.query.weight[rows][:, columns] * math.sqrt(4 / 8)
    torch.testing.assert_close(layer.query.weight, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.key.weight, teacher_layer.key.weight[rows][:, columns], rtol=0, atol=0)


def test_pruning_needs_calibration_data(teacher):
    with pytest.raises(ValueError, match="init='pruned' ranks the teacher's channels, heads and neurons on data"):
        make_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=2, init="pruned")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (dict(hidden_size=64, num_attention_heads=4, intermediate_size=37), r"hidden_size 64 > teacher 32"),
        (dict(hidden_size=32, num_attention_heads=2, intermediate_size=37), r"head width 16 > teacher 8"),
        (dict(hidden_size=16, num_attention_heads=2, intermediate_size=50), r"intermediate_size 50 > teacher 37"),
    ],
)
def test_a_student_wider_than_the_teacher_is_refused(teacher, batches, shape, message):
    with pytest.raises(ValueError, match=message):
        make_student(teacher, num_hidden_layers=2, **shape, init="pruned", calibration_data=batches)


def test_other_architectures_are_refused(batches):
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    with pytest.raises(ValueError, match="init='pruned' knows BERT-style layers"):
        make_student(teacher, num_hidden_layers=1, hidden_size=16, num_attention_heads=2, init="pruned",
                     calibration_data=batches)  # fmt: skip


def test_a_masked_lm_keeps_its_tied_head(batches):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_bert_config(initializer_range=0.2, **NO_DROPOUT)).eval()
    shape = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=20)
    student = make_student(teacher, **shape, init="pruned", calibration_data=batches)
    decoder = student.cls.predictions.decoder
    assert decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
    torch.testing.assert_close(decoder.bias, teacher.cls.predictions.decoder.bias, rtol=0, atol=0)
    assert student(**features(batches[0])).logits.shape == (8, batches[0]["input_ids"].shape[1], 99)


def test_auto_prunes_where_it_applies_and_falls_back_to_random(teacher, batches, caplog):
    shape = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=20)
    pruned = make_student(teacher, **shape, init="pruned", calibration_data=batches)
    with caplog.at_level("INFO", logger="nlpkd.student"):
        auto = make_student(teacher, **shape, init="auto", calibration_data=batches)
    assert "Student init: pruned from the teacher" in caplog.text
    for name, value in auto.state_dict().items():
        torch.testing.assert_close(value, pruned.state_dict()[name], rtol=0, atol=0, msg=name)
    caplog.clear()
    torch.manual_seed(3)
    wider = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=37)
    with caplog.at_level("INFO", logger="nlpkd.student"):
        random_student = make_student(teacher, **wider, init="auto", calibration_data=batches)
    assert "Student init: random (init='auto'; pruning does not apply: init='pruned' keeps parts" in caplog.text
    torch.manual_seed(3)
    expected = make_student(teacher, **wider, init="random")
    torch.testing.assert_close(random_student.classifier.weight, expected.classifier.weight, rtol=0, atol=0)
    with caplog.at_level("INFO", logger="nlpkd.student"):
        make_student(teacher, **shape, init="auto")
    assert "pruning does not apply: no calibration data" in caplog.text
