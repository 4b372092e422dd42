import json
import math
import struct

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

from nlpkd import report

WORDS = ["the", "film", "was", "good", "bad", "very", "a", "plot", "actor", "boring"]


@pytest.fixture
def config():
    return BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=2
    )


@pytest.fixture
def model(config):
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


@pytest.fixture
def tokenizer(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(vocab_file))


def safetensors_data_bytes(path):
    # safetensors layout: 8-byte little-endian header length, JSON header, then the raw tensor bytes
    with open(path, "rb") as file:
        header_length = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_length))
    offsets = [entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"]
    return sum(end - start for start, end in offsets)


def record_forward_inputs(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append(
            {
                "shape": tuple(kwargs["input_ids"].shape),
                "inference_mode": torch.is_inference_mode_enabled(),
                "training": module.training,
            }
        )

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_count_parameters_counts_tied_weights_once(config):
    model = BertForMaskedLM(config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    unique = {id(parameter): parameter.numel() for _, parameter in model.named_parameters(remove_duplicate=False)}
    assert report.count_parameters(model) == sum(unique.values())
    assert report.count_parameters(model) < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def test_count_parameters_of_a_tiny_bert(model, config):
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size + 2) * 32
    layer = 4 * (32 * 32 + 32) + (32 * 37 + 37) + (37 * 32 + 32) + 2 * 2 * 32
    pooler, classifier = 32 * 32 + 32, 32 * 2 + 2
    assert report.count_parameters(model) == embeddings + 2 * layer + pooler + classifier


@pytest.mark.parametrize("model_class", [BertForSequenceClassification, BertForMaskedLM])
def test_model_size_matches_the_saved_safetensors(config, tmp_path, model_class):
    model = model_class(config)
    model.save_pretrained(tmp_path)
    size_mb = report.model_size_mb(model)
    assert size_mb * 1e6 == safetensors_data_bytes(tmp_path / "model.safetensors")
    assert report.model_size_mb(model.to(torch.bfloat16)) == pytest.approx(size_mb / 2)


def test_measure_latency_times_one_batch_in_inference_mode(model, tokenizer):
    calls = record_forward_inputs(model)
    model.train()
    latency = report.measure_latency(model, tokenizer, ["the film was good", "bad"], batch_size=3, warmup=1, repeats=4)
    assert latency > 0 and math.isfinite(latency)
    assert len(calls) == 5
    assert all(call == {"shape": (3, 6), "inference_mode": True, "training": False} for call in calls)
    assert model.training


def test_measure_latency_truncates_to_max_length(model, tokenizer):
    calls = record_forward_inputs(model)
    model.eval()
    report.measure_latency(model, tokenizer, [" ".join(WORDS * 5)], batch_size=1, max_length=16, warmup=0, repeats=1)
    assert calls[0]["shape"] == (1, 16)
    assert not model.training


def test_measure_latency_rejects_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="texts is empty"):
        report.measure_latency(model, tokenizer, [], batch_size=1)
    with pytest.raises(ValueError, match="Need batch_size >= 1, repeats >= 1, warmup >= 0; got 0, 5, 2"):
        report.measure_latency(model, tokenizer, ["good"], batch_size=0)


def test_throughput_is_examples_per_second_at_batch_32(model, tokenizer, monkeypatch):
    calls = record_forward_inputs(model)
    assert report.throughput(model, tokenizer, ["good film"], warmup=0, repeats=1) > 0
    assert calls[0]["shape"][0] == 32
    monkeypatch.setattr(report, "measure_latency", lambda *args: 64.0)
    assert report.throughput(model, tokenizer, ["good film"]) == pytest.approx(500.0)


def test_accuracy_confidence_interval():
    assert report.accuracy_confidence_interval(0.85, 1000) == pytest.approx(1.96 * math.sqrt(0.85 * 0.15 / 1000))
    assert report.accuracy_confidence_interval(0.5, 100, z=1.0) == pytest.approx(0.05)
    assert report.accuracy_confidence_interval(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="got accuracy=1.2, n=10"):
        report.accuracy_confidence_interval(1.2, 10)
    with pytest.raises(ValueError, match="got accuracy=0.5, n=0"):
        report.accuracy_confidence_interval(0.5, 0)


def test_format_results_table():
    results = {
        "teacher": {
            "accuracy": 0.851,
            "accuracy_ci": 0.0214,
            "f1": 0.8497,
            "params": 22_713_216,
            "size_mb": 90.87,
            "latency_ms_b1": 12.5,
            "throughput_b32": 140.2,
        },
        "student": {
            "accuracy": 0.791,
            "accuracy_ci": 0.0246,
            "f1": 0.79,
            "params": 14_350_000,
            "size_mb": 57.4,
            "latency_ms_b1": 5.0,
            "throughput_b32": 350.0,
        },
        "baseline": {"accuracy": 0.765, "params": 14_350_000, "latency_ms_b1": 4.0},
        "retention": 0.929,
        "speedup": 2.5,
    }
    lines = report.format_results_table(results).splitlines()
    headers = [cell.strip() for cell in lines[0].split("  ") if cell.strip()]
    assert headers == ["model", "accuracy %", "f1 %", "params M", "size MB", "latency b1 ms", "throughput b32 /s"]
    assert lines[1].split() == ["teacher", "85.1", "±", "2.1", "85.0", "22.71", "90.9", "12.5", "140.2"]
    assert lines[2].split() == ["student", "79.1", "±", "2.5", "79.0", "14.35", "57.4", "5.0", "350.0"]
    assert lines[3].split() == ["baseline", "76.5", "-", "14.35", "-", "4.0", "-"]
    assert lines[4] == "retention of teacher accuracy: student 92.9%, baseline 89.9%"
    assert lines[5] == "speed-up over teacher at batch 1: student 2.5×, baseline 3.1×"
    assert len(lines) == 6
    assert lines[1].index("85.0") == lines[2].index("79.0") == lines[0].index("f1 %")
    assert lines[3].index("14.35") == lines[0].index("params M")


def test_format_results_table_without_a_teacher_has_no_ratio_lines():
    lines = report.format_results_table({"student": {"accuracy": 0.5}}).splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["student", "50.0"]
