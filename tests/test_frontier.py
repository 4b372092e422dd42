"""benchmarks/frontier.py without training: the flags each shape passes to the recipe, reuse, the summary."""

import importlib.util
import json
from pathlib import Path

import pytest

from nlpkd.assets import minilm_path
from nlpkd.recipes import text_classification

FRONTIER = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier_benchmark", FRONTIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(frontier, shape: str, tmp_path):
    flags = frontier.recipe_flags(shape, seed=3, epochs=5, output_dir=str(tmp_path / shape))
    _, _, student_args, *_, args = text_classification.parse_args(flags)
    return student_args, args


def test_the_narrow_two_head_student_learns_from_the_logits_alone(frontier, tmp_path):
    student_args, args = parse(frontier, "2L-128H", tmp_path)
    assert (student_args.student_num_layers, student_args.student_hidden_size) == (2, 128)
    assert student_args.student_num_heads == 2
    assert (args.hidden_weight, args.attention_weight) == (0.0, 0.0)
    assert args.logit_weight > 0 and args.seed == 3


def test_the_four_layer_students_keep_the_recipes_loss_set(frontier, tmp_path):
    for shape in ("4L-312H", "4L-192H"):
        student_args, args = parse(frontier, shape, tmp_path)
        assert student_args.student_num_layers == 4
        assert args.hidden_weight == text_classification.DEFAULTS["hidden_weight"] > 0
        assert args.attention_weight == text_classification.DEFAULTS["attention_weight"] > 0


def write_run(path: Path, accuracy: float, hidden_weight: float) -> Path:
    run = {
        "teacher": {"accuracy": 0.8, "params": 33e6},
        "student": {"accuracy": accuracy, "params": 4e6},
        "distillation": {"hidden_weight": hidden_weight, "attention_weight": 0.0},
    }
    path.write_text(json.dumps(run))
    return path


def test_reuse_refuses_a_run_distilled_with_other_loss_weights(frontier, tmp_path):
    path = write_run(tmp_path / "results.json", accuracy=0.49, hidden_weight=1.0)
    with pytest.raises(ValueError, match=r"hidden_weight=1.0.*2L-128H uses hidden_weight=0.0"):
        frontier.reusable_run(str(path), "2L-128H")
    assert frontier.reusable_run(str(path), "4L-312H")["student"]["accuracy"] == 0.49


def test_summary_gives_mean_and_std_over_seeds(frontier, tmp_path):
    runs = [
        frontier.reusable_run(str(write_run(tmp_path / f"{seed}.json", accuracy, 0.0)), "2L-128H")
        for seed, accuracy in enumerate([0.78, 0.80, 0.82])
    ]
    row = frontier.summarise(runs)
    assert row["accuracy"] == pytest.approx((0.80, 0.02))
    assert row["retention"] == pytest.approx((1.0, 0.025))
    assert row["teacher_accuracy"] == 0.8


def test_the_speed_stage_times_the_models_in_turns_through_nlpkd(frontier, monkeypatch):
    timed = []

    def fake_forward_timer(model, tokenizer, typical_text, texts, max_length):
        return lambda: timed.append(model) or {"latency_ms_b1": 10.0 if model == "teacher model" else 2.0}

    def fake_from_pretrained(path, **kwargs):
        return "teacher model" if path == "teacher" else f"{path} model"

    monkeypatch.setattr(frontier.report, "forward_timer", fake_forward_timer)
    monkeypatch.setattr(frontier.AutoModelForSequenceClassification, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(frontier.AutoTokenizer, "from_pretrained", lambda path: None)
    speed, rounds = frontier.measure_speed("teacher", {"2L-128H": "small"}, ["good", "bad"], 16, num_rounds=3)
    assert timed == ["teacher model", "small model", "small model", "teacher model", "teacher model", "small model"]
    assert len(rounds) == 3
    assert speed["2L-128H"]["speedup_b1"] == pytest.approx(5.0)


def test_the_table_names_the_shapes_that_meet_the_target(frontier):
    def row(retention: float, speedup_b1: float) -> dict:
        return {
            "params": 4e6,
            "accuracy": (0.8 * retention, 0.01),
            "retention": (retention, 0.01),
            "teacher_accuracy": 0.8,
            "speedup_b1": speedup_b1,
            "speedup_b32": 2 * speedup_b1,
        }

    table = frontier.format_frontier({"4L-312H": row(0.97, 4.9), "2L-128H": row(0.975, 10.0)}, [1, 2, 3])
    assert "78.00% ± 1.00%" in table and "10.00x" in table
    assert table.endswith("met by 2L-128H")
    assert frontier.format_frontier({"2L-128H": row(0.96, 10.0)}, [1]).endswith("not met")


def test_the_speed_stage_reads_the_runs_teacher_and_length_limit_from_the_extra_flags(frontier, tmp_path):
    parse_args = text_classification.parse_args
    data_args, teacher_args, *_ = parse_args([])
    assert teacher_args.teacher_path == minilm_path()  # the packaged teacher by default
    data_args, teacher_args, *_ = parse_args(["--teacher_model_name_or_path", str(tmp_path), "--max_seq_length", "64"])
    assert (teacher_args.teacher_path, data_args.max_seq_length) == (str(tmp_path), 64)
