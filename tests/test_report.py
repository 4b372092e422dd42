import json
import logging
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


def test_translation_tables_show_each_models_decoding():
    results = {
        "teacher": {"bleu": 20.0, "bleu_ci": 0.9, "decoding": "beam 4", "latency_ms_b1": 300.0},
        "student": {"bleu": 18.0, "bleu_ci": 0.8, "decoding": "greedy", "latency_ms_b1": 75.0, "speedup_b1": 4.0},
        "student_beam4": {"bleu": 18.5, "decoding": "beam 4", "latency_ms_b1": 150.0, "speedup_b1": 2.0},
        "speedup_decoding": "student greedy against teacher beam 4, batch 1",
    }
    lines = report.format_results_table(results).splitlines()
    assert lines[0].split()[:3] == ["model", "decoding", "BLEU"]
    assert lines[1].split()[:5] == ["teacher", "beam", "4", "20.0", "±"]
    assert lines[2].split()[:3] == ["student", "greedy", "18.0"]
    assert lines[-1] == "speed-up over teacher at batch 1: student 4.0×, student_beam4 2.0×"
    markdown = report.markdown_results_table(results).splitlines()
    assert markdown[0].startswith("| model | decoding | BLEU |")
    assert markdown[3].startswith("| student | greedy | 18.0 ± 0.8 |")
    # A table of models without a decoding (classifiers, language models) has no such column.
    assert "decoding" not in report.format_results_table({"student": {"accuracy": 0.5}})


def test_format_results_table_without_a_teacher_has_no_ratio_lines():
    lines = report.format_results_table({"student": {"accuracy": 0.5}}).splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["student", "50.0"]


class BusyMachine:
    """A fake clock on which work runs `slowdown` times slower while another job holds the cores, from
    `busy_from` to `busy_until` (seconds)."""

    def __init__(self, busy_from: float, busy_until: float, slowdown: float):
        self.now, self.busy_from, self.busy_until, self.slowdown = 0.0, busy_from, busy_until, slowdown

    def clock(self) -> float:
        return self.now

    def timer(self, latency_ms: float):
        """A model whose forward takes `latency_ms` on a quiet machine; it reports what the clock saw."""

        def one_round() -> dict[str, float]:
            busy = self.busy_from <= self.now < self.busy_until
            seconds = latency_ms / 1000 * (self.slowdown if busy else 1)
            self.now += seconds
            return {"latency_ms_b1": 1000 * seconds}

        return one_round


def test_median_speed_is_the_median_of_per_round_ratios():
    def cost(latency_ms: float, throughput: float) -> dict:
        return {"latency_ms_b1": latency_ms, "throughput_b32": throughput}

    rounds = [  # the second round ran on a loaded machine: the teacher's time doubled, the student's did not
        {"teacher": cost(100.0, 10.0), "student": cost(10.0, 200.0)},
        {"teacher": cost(200.0, 5.0), "student": cost(10.0, 200.0)},
        {"teacher": cost(90.0, 10.0), "student": cost(10.0, 220.0)},
    ]
    speed = report.median_speed(rounds)
    assert speed["teacher"] == {"latency_ms_b1": 100.0, "throughput_b32": 10.0}  # no speed-up over itself
    assert speed["student"] == {
        "latency_ms_b1": 10.0,
        "throughput_b32": 200.0,
        "speedup_b1": pytest.approx(10.0),  # ratios 10, 20, 9; the ratio of the medians would also be 10 here
        "speedup_b32": pytest.approx(22.0),  # ratios 20, 40, 22; the ratio of the medians, 20, misses the third
    }
    generation = [{"teacher": {"latency_ms_b1": 300.0}, "student": {"latency_ms_b1": 100.0}}]  # no throughput
    assert report.median_speed(generation)["student"] == {"latency_ms_b1": 100.0, "speedup_b1": pytest.approx(3.0)}


def test_interleaved_rounds_survive_a_job_that_starts_and_stops_during_the_timing():
    # A 100-ms teacher and a 10-ms student (truly 10x) on a machine slowed 5x for its first 2.78 seconds.
    interleaved = BusyMachine(busy_from=0.0, busy_until=2.78, slowdown=5.0)
    timers = {"teacher": interleaved.timer(100.0), "student": interleaved.timer(10.0)}
    speed, rounds = report.measure_speed(timers, num_rounds=10, show_progress=False)
    ratios = [round_["teacher"]["latency_ms_b1"] / round_["student"]["latency_ms_b1"] for round_ in rounds]
    assert len(rounds) == 10 and min(ratios) < 5  # the job stopped between the student and the teacher of a round
    assert speed["student"]["speedup_b1"] == pytest.approx(10.0)

    # The same machine, one model timed after the other: the teacher meets the job, the student does not.
    one_after_the_other = BusyMachine(busy_from=0.0, busy_until=2.78, slowdown=5.0)
    teacher = report.timing_rounds({"teacher": one_after_the_other.timer(100.0)}, 10, show_progress=False)
    student = report.timing_rounds({"student": one_after_the_other.timer(10.0)}, 10, show_progress=False)
    ratio_of_medians = (
        report.median_speed(teacher)["teacher"]["latency_ms_b1"]
        / (report.median_speed(student)["student"]["latency_ms_b1"])
    )
    assert ratio_of_medians == pytest.approx(50.0)  # the busy machine's 5x, taken for the student's speed


def test_timing_rounds_take_turns_in_alternating_order():
    calls = []

    def timer(name: str):
        return lambda: calls.append(name) or {"latency_ms_b1": 1.0}

    rounds = report.timing_rounds({"teacher": timer("teacher"), "student": timer("student")}, 3, show_progress=False)
    assert calls == ["teacher", "student", "student", "teacher", "teacher", "student"]
    assert all(list(round_) == ["teacher", "student"] for round_ in rounds)
    with pytest.raises(ValueError, match="num_rounds must be >= 1, got 0"):
        report.timing_rounds({"teacher": timer("teacher")}, 0)


def test_timing_rounds_log_their_progress_unless_told_to_be_quiet(caplog):
    machine = BusyMachine(busy_from=0.0, busy_until=0.0, slowdown=1.0)
    timers = {"teacher": machine.timer(15_000.0), "student": machine.timer(5_000.0)}  # 20 seconds a round
    with caplog.at_level(logging.INFO, logger="nlpkd.progress"):
        report.timing_rounds(timers, 3, show_progress=True, clock=machine.clock)
    assert [record.getMessage() for record in caplog.records] == [  # a line at most every 30 s, and at the end
        "speed of teacher, student in turns: 2/3 rounds (67%), 0:00:40 elapsed, ETA 0:00:20",
        "speed of teacher, student in turns: 3/3 rounds (100%), done in 0:01:00",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nlpkd.progress"):
        report.timing_rounds(timers, 3, show_progress=False, clock=machine.clock)
    assert caplog.records == []


def test_forward_timer_gives_one_rounds_latency_and_throughput(model, tokenizer):
    calls = record_forward_inputs(model)
    timings = report.forward_timer(model, tokenizer, "the film was good", ["good", "bad film"], 16)()
    assert set(timings) == {"latency_ms_b1", "throughput_b32"}
    assert all(value > 0 and math.isfinite(value) for value in timings.values())
    assert [call["shape"][0] for call in calls] == [1] * 6 + [32] * 4  # 1 + 5 passes at batch 1, 1 + 3 at 32


def test_majority_class_rate():
    assert report.majority_class_rate([0, 1, 1, 1]) == 0.75
    assert report.majority_class_rate(["pos", "neg", "neu"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="labels is empty"):
        report.majority_class_rate([])


@pytest.mark.parametrize(
    ("entry", "majority_rate", "verdict"),
    [
        # The run: only the majority class predicted (accuracy = majority rate, macro-F1 0.47).
        ({"accuracy": 0.9, "accuracy_ci": 0.02, "f1": 0.47}, 0.9, "majority_class"),
        ({"accuracy": 0.45, "accuracy_ci": 0.03, "f1": 0.44}, 0.5, "majority_class"),  # below it
        ({"accuracy": 0.54, "accuracy_ci": 0.05, "f1": 0.53}, 0.5, "majority_class"),  # above, inside the interval
        ({"accuracy": 0.56, "accuracy_ci": 0.05, "f1": 0.55}, 0.5, "ok"),  # above its interval's lower end
        ({"accuracy": 0.54, "f1": 0.53}, 0.5, "ok"),  # no interval: the accuracy alone
        ({"accuracy": 0.95, "accuracy_ci": 0.01, "f1": 0.75}, 0.9, "low_macro_f1"),  # 20 points below
        ({"accuracy": 0.95, "accuracy_ci": 0.01, "f1": 0.85}, 0.9, "ok"),  # 10 points below
        ({"accuracy": 0.8, "f1": 0.6}, None, "low_macro_f1"),  # no majority rate: the F1 check alone
        ({"perplexity": 40.0}, 0.5, "ok"),  # not a classifier
    ],
)
def test_classification_verdict(entry, majority_rate, verdict):
    assert report.classification_verdict(entry, majority_rate) == verdict


def useless_results() -> dict:
    """The issue's run: the teacher nearly perfect, student and baseline predicting the majority class alone."""
    return {
        "teacher": {"accuracy": 0.98, "accuracy_ci": 0.01, "f1": 0.97, "latency_ms_b1": 12.0},
        "student": {"accuracy": 0.9, "accuracy_ci": 0.02, "f1": 0.47, "latency_ms_b1": 3.0, "speedup_b1": 3.5},
        "baseline": {"accuracy": 0.9, "accuracy_ci": 0.02, "f1": 0.47, "latency_ms_b1": 3.0, "speedup_b1": 3.9},
        "majority_class_rate": 0.9,
        "speed_rounds": [{}] * 7,
    }


def test_health_warnings_name_the_useless_models_and_their_likely_causes():
    student, baseline = report.health_warnings(useless_results())
    assert student.startswith(
        "student is no better than always predicting the majority class (accuracy 90.0% ± 2.0% vs majority-class "
        "rate 90.0%; macro-F1 47.0%). Likely causes: too few training steps for the loss set"
    )
    assert "--hidden_weight 0 --attention_weight 0" in student and "--learning_rate" in student
    assert baseline.startswith("baseline is no better than always predicting the majority class")
    assert "--num_train_epochs" in baseline and "hidden_weight" not in baseline  # the baseline has no layer losses

    results = useless_results()
    results["teacher"].update(accuracy=0.95, f1=0.7)
    [teacher, *_] = report.health_warnings(results)
    assert teacher.startswith(
        "teacher's macro-F1 70.0% is far below its accuracy 95.0% ± 1.0% (more than 15% apart; majority-class rate "
        "90.0%): it misses the rarer classes. Likely causes: the teacher's fine-tuning"
    )
    assert "--teacher_num_train_epochs" in teacher
    healthy = {"teacher": {"accuracy": 0.85, "f1": 0.84}, "student": {"accuracy": 0.8, "f1": 0.79}}
    assert report.health_warnings({**healthy, "majority_class_rate": 0.5}) == []


def test_the_data_checks_warnings_follow_the_models_in_table_and_warnings():
    # split_checks' warnings were logged once and kept in results.json, but the printed table and card said nothing.
    results = {**useless_results(), "data_checks": {"warnings": ["Rows whose text is also in the train split: 3"]}}
    warnings = report.health_warnings(results)
    assert len(warnings) == 3 and warnings[-1] == "data: Rows whose text is also in the train split: 3"
    assert report.format_results_table(results).splitlines()[-1] == (
        "WARNING: data: Rows whose text is also in the train split: 3"
    )


def test_results_table_shows_the_majority_rate_the_warnings_and_the_median_speedup():
    lines = report.format_results_table(useless_results()).splitlines()
    assert lines[4] == "majority-class rate (always predicting the most frequent class): 90.0%"
    assert lines[6] == "speed-up over teacher at batch 1 (median of 7 interleaved rounds): student 3.5×, baseline 3.9×"
    assert lines[7].startswith("WARNING: student is no better than always predicting the majority class")
    assert lines[8].startswith("WARNING: baseline is no better than always predicting the majority class")
    assert len(lines) == 9
    markdown = report.markdown_results_table(useless_results())
    assert "| student | 90.0 ± 2.0 | 47.0 | - | - | 3.0 | - | 3.5× | 91.8% |" in markdown
