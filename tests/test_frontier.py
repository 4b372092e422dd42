"""benchmarks/frontier.py without training: the flags of each shape and lever, reuse, the summary, table and plot."""

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


def parse(frontier, shape: str, lever: str, tmp_path):
    flags = frontier.recipe_flags(shape, lever, seed=3, epochs=5, output_dir=str(tmp_path / shape))
    _, _, student_args, _, augment_args, *_, args = text_classification.parse_args(flags)
    return student_args, augment_args, args


def test_each_lever_reaches_the_recipe_as_its_flags(frontier, tmp_path):
    student_args, augment_args, args = parse(frontier, "3L-192H", "pruned", tmp_path)
    assert (student_args.student_num_layers, student_args.student_hidden_size) == (3, 192)
    assert student_args.student_num_heads == 6 and args.attention_loss == "kl"  # not the teacher's 12 heads
    assert student_args.student_init == "pruned" and not student_args.no_baseline  # the no-KD row's runs
    assert args.hidden_weight == text_classification.DEFAULTS["hidden_weight"] > 0
    assert (args.seed, args.num_train_epochs, augment_args.augment_copies) == (3, 5, 0)
    _, _, args = parse(frontier, "2L-128H", "logits", tmp_path)
    assert (args.hidden_weight, args.attention_weight) == (0.0, 0.0) and args.logit_weight > 0
    _, _, args = parse(frontier, "4L-312H", "anneal", tmp_path)
    assert (args.temperature_schedule, args.final_temperature, args.attention_loss) == ("linear", 1.0, "mse")
    student_args, augment_args, args = parse(frontier, "4L-312H", "aug4", tmp_path)
    assert augment_args.augment_copies == 4 and args.num_train_epochs == 2  # the lever's epochs win
    assert student_args.no_baseline
    student_args, _, _ = parse(frontier, "4L-312H", "random", tmp_path)
    assert student_args.student_init == "random"


def write_run(path: Path, accuracy: float, **settings) -> Path:
    run = {
        "teacher": {"accuracy": 0.8, "params": 33e6},
        "student": {"accuracy": accuracy, "f1": accuracy - 0.01, "params": 4e6},
        "distillation": {"hidden_weight": 1.0, "attention_weight": 1.0},
        "train_runtime_s": {"student": 100.0 * accuracy},
        **settings,
    }
    path.write_text(json.dumps(run))
    return path


def test_reuse_refuses_a_run_made_with_other_settings_than_the_lever(frontier, tmp_path):
    path = write_run(tmp_path / "results.json", accuracy=0.49)
    with pytest.raises(
        ValueError, match=r"distillation.hidden_weight=1.0, but the frontier's 'logits' lever needs 0.0"
    ):
        frontier.reusable_run(str(path), "logits")
    with pytest.raises(ValueError, match=r"augmentation.copies=None, but the frontier's 'aug4' lever needs 4"):
        frontier.reusable_run(str(path), "aug4")
    assert frontier.reusable_run(str(path), "pruned")["student"]["accuracy"] == 0.49  # no init recorded: older run
    random = write_run(tmp_path / "random.json", accuracy=0.5, student_init="random")
    with pytest.raises(ValueError, match=r"student_init='random', but the frontier's 'pruned' lever needs 'pruned'"):
        frontier.reusable_run(str(random), "pruned")
    augmented = write_run(tmp_path / "augmented.json", accuracy=0.5, augmentation={"copies": 4})
    with pytest.raises(ValueError, match=r"augmentation=\{'copies': 4\}, but .* 'pruned' lever needs None"):
        frontier.reusable_run(str(augmented), "pruned")
    assert frontier.reusable_run(str(augmented), "aug4")["augmentation"]["copies"] == 4


def test_summary_gives_mean_and_std_over_seeds(frontier, tmp_path):
    runs = [
        frontier.reusable_run(str(write_run(tmp_path / f"{seed}.json", accuracy)), "pruned")
        for seed, accuracy in enumerate([0.78, 0.80, 0.82])
    ]
    row = frontier.summarise(runs)
    assert row["accuracy"] == pytest.approx((0.80, 0.02))
    assert row["f1"] == pytest.approx((0.79, 0.02))
    assert row["retention"] == pytest.approx((1.0, 0.025))
    assert row["teacher_accuracy"] == 0.8 and row["seeds"] == 3
    assert row["train_runtime_s"] == pytest.approx(80.0)


def frontier_row(retention: float, speedup_b1: float) -> dict:
    return {
        "params": 4e6,
        "accuracy": (0.8 * retention, 0.01),
        "f1": None,
        "retention": (retention, 0.01),
        "teacher_accuracy": 0.8,
        "speedup_b1": speedup_b1,
        "speedup_b32": 2 * speedup_b1,
        "train_runtime_s": 120.0,
    }


def test_the_table_says_which_rows_meet_the_targets_and_by_how_much_the_others_miss(frontier):
    rows = {
        ("4L-312H", "pruned"): frontier_row(0.975, 2.0),
        ("3L-192H", "pruned"): frontier_row(0.95, 5.5),
        ("3L-192H", "aug4"): frontier_row(0.965, 5.5),
        ("3L-192H", frontier.BASELINE): frontier_row(0.99, 5.5),  # a baseline is no distilled student
    }
    table = frontier.format_frontier(rows, [1, 2, 3])
    assert "| 3L-192H | aug4 | 4.0 M | 77.20% ± 1.00% | — | 96.5% ± 1.0% | 5.5x | 11.0x | 120 s |" in table
    assert table.endswith(
        "target >= 5x at >= 96 %: met by 3L-192H aug4\ntarget 4L-312H >= 97 %: met (best: pruned at 97.5%)"
    )
    missed = frontier.verdicts(
        {("3L-192H", "pruned"): frontier_row(0.95, 5.5), ("4L-312H", "random"): frontier_row(0.9, 2.0)}
    )
    assert missed == [
        "target >= 5x at >= 96 %: not met; best >= 5x: 3L-192H pruned at 95.0%",
        "target 4L-312H >= 97 %: not met (best: random at 90.0%)",
    ]


def test_the_plot_is_written(frontier, tmp_path):
    rows = {("3L-192H", "pruned"): frontier_row(0.95, 5.5), ("3L-192H", frontier.BASELINE): frontier_row(0.9, 5.5)}
    path = frontier.plot_frontier(rows, str(tmp_path / "frontier.png"))
    assert Path(path).read_bytes().startswith(b"\x89PNG")


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


def test_the_speed_stage_reads_the_runs_teacher_and_length_limit_from_the_extra_flags(frontier, tmp_path):
    parse_args = text_classification.parse_args
    data_args, teacher_args, *_ = parse_args([])
    assert teacher_args.teacher_path == minilm_path()  # the packaged teacher by default
    data_args, teacher_args, *_ = parse_args(["--teacher_model_name_or_path", str(tmp_path), "--max_seq_length", "64"])
    assert (teacher_args.teacher_path, data_args.max_seq_length) == (str(tmp_path), 64)
