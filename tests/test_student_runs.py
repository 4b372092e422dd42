"""benchmarks/student_runs.py and schedules.py without training: flags, result files and the summary table."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # schedules.py imports student_runs as its sibling
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_recipe_flags_follow_the_double_dash():
    runs = load("student_runs")
    assert runs.split_argv(["--seeds", "1", "--", "--num_train_epochs", "2"]) == (
        ["--seeds", "1"],
        ["--num_train_epochs", "2"],
    )
    assert runs.split_argv(["--seeds", "1"]) == (["--seeds", "1"], [])


def test_summary_is_the_mean_and_sample_spread_over_seeds(tmp_path):
    runs = load("student_runs")
    runs.write_json(tmp_path / "models.json", {"teacher": {"validation": 0.9, "test": 0.85}})
    for seed, accuracy in ((1, 0.70), (2, 0.74), (3, 0.78)):
        runs.write_json(
            tmp_path / f"logits-seed{seed}.json", {"run": "logits", "seed": seed, "validation": accuracy, "test": 0.5}
        )
    lines = runs.summary(str(tmp_path)).splitlines()
    assert lines[0].split() == ["teacher", "validation", "90.0", "%", "test", "85.0", "%"]
    # mean 74 %, sample std of (70, 74, 78) = 4.0
    assert "logits (3 seeds)" in lines[1] and "validation 74.0 % ± 4.0" in lines[1] and "test 50.0 % ± 0.0" in lines[1]


def test_every_schedule_config_is_a_valid_argument_set(tmp_path):
    schedules = load("schedules")
    from nlpkd.recipes import text_classification

    *_, args = text_classification.parse_args(["--output_dir", str(tmp_path)])
    for name, changes in schedules.CONFIGS.items():
        values = {field: getattr(args, field) for field in ("hard_label_weight", "logit_weight")}
        rebuilt = type(args)(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{**values, **changes})
        assert all(getattr(rebuilt, key) == value for key, value in changes.items()), name
    with pytest.raises(SystemExit):
        schedules.benchmark_options(["--configs", "cosine"])
