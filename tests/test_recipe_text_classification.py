"""Smoke runs of recipes/text_classification.py on a tiny teacher and a small local CSV file."""

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import recipe_progress, speed_rounds_done, tiny_bert_config
from transformers import AutoModelForSequenceClassification, BertModel, BertTokenizerFast

from nlpkd import report
from nlpkd.recipes import text_classification as recipe

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
WORDS = ["good", "great", "fine", "fun", "bad", "awful", "dull", "poor", "movie", "film", "the", "was", "a"]
MODEL_KEYS = ("accuracy", "f1", "params", "size_mb", "latency_ms_b1", "throughput_b32")


@pytest.fixture
def tiny_teacher_dir(tmp_path) -> str:
    """A tiny BERT *body* (no classification head, like the packaged MiniLM) with its tokenizer."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    teacher = BertModel(tiny_bert_config(vocab_size=len(vocab), num_hidden_layers=2))
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    return str(teacher_dir)


@pytest.fixture
def reviews_csv(tmp_path) -> str:
    generator = torch.Generator().manual_seed(0)
    lines = ["review,sentiment"]
    for index in range(60):
        positive = index % 2 == 0
        polar = WORDS[int(torch.randint(0, 4, (1,), generator=generator)) + (0 if positive else 4)]
        lines.append(f"the movie was {polar} a film,{'pos' if positive else 'neg'}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def recipe_flags(teacher_dir: str, train_file: str, tmp_path, *extra: str) -> list[str]:
    return [
        "--teacher_model_name_or_path", teacher_dir,
        "--train_file", train_file,
        "--text_column", "review",
        "--label_column", "sentiment",
        "--max_seq_length", "64",  # the tiny teacher's max_position_embeddings (the default 128 is refused)
        "--teacher_cache_dir", str(tmp_path / "teachers"),
        "--output_dir", str(tmp_path / "out"),
        "--max_steps", "3",
        "--per_device_train_batch_size", "8",
        "--student_num_layers", "1",
        "--student_hidden_size", "16",
        "--student_num_heads", "4",
        "--student_intermediate_size", "20",
        "--use_cpu", "true",
        *extra,
    ]  # fmt: skip


def test_recipe_runs_all_stages_and_writes_results(tiny_teacher_dir, reviews_csv, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="nlpkd.progress")
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--hidden_weight", "1", "--attention_weight", "1")
    results = recipe.main([*flags, "--disable_tqdm", "true"])  # quiet: no progress lines

    output_dir = tmp_path / "out"
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for name in ("teacher", "student", "baseline"):
        assert set(MODEL_KEYS) <= set(saved[name]), name
        assert 0 <= saved[name]["accuracy"] <= 1
        assert saved[name]["num_test_examples"] == 6  # 10 % of 60 rows
    assert saved["retention"] == pytest.approx(saved["student"]["accuracy"] / saved["teacher"]["accuracy"])
    # The models were timed in turns: the speed-up is the median of the per-round ratios, not the ratio of the
    # median latencies (which a load present in some rounds moves).
    assert len(saved["speed_rounds"]) == report.SPEED_ROUNDS
    assert all(set(round_) == {"teacher", "student", "baseline"} for round_ in saved["speed_rounds"])
    recomputed = report.median_speed(saved["speed_rounds"])["student"]["speedup_b1"]
    assert saved["speedup"] == saved["student"]["speedup_b1"] == pytest.approx(recomputed, rel=1e-12)
    assert saved["student"]["params"] < saved["teacher"]["params"]
    # How long each training took, by the Trainer's own clock.
    assert set(saved["train_runtime_s"]) == {"student", "baseline"}
    assert all(seconds > 0 for seconds in saved["train_runtime_s"].values())
    # A useless result says so: the test split's majority-class rate, a verdict per model, the warnings.
    assert saved["majority_class_rate"] in [count / 6 for count in (3, 4, 5, 6)]  # of the 6 test rows' 2 labels
    for name in ("teacher", "student", "baseline"):
        assert saved[name]["verdict"] == report.classification_verdict(saved[name], saved["majority_class_rate"])
    assert saved["warnings"] == report.health_warnings(saved)
    table = capsys.readouterr().out  # the table is printed
    for line_start in ("teacher ", "student ", "baseline ", "majority-class rate", "retention of teacher accuracy:"):
        assert any(line.startswith(line_start) for line in table.splitlines()), line_start
    assert f"speed-up over teacher at batch 1 (median of {report.SPEED_ROUNDS} interleaved rounds): student " in table
    assert [line.removeprefix("WARNING: ") for line in table.splitlines() if line.startswith("WARNING")] == saved[
        "warnings"
    ]

    student = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert student.config.num_hidden_layers == 1
    assert student.config.id2label == {0: "neg", 1: "pos"}
    assert (output_dir / "tokenizer.json").is_file()
    assert (output_dir / "baseline" / "model.safetensors").is_file()

    # Stage 1 kept the fine-tuned teacher; a second run loads it instead of training again.
    cached = [p for p in (tmp_path / "teachers").iterdir() if (p / "config.json").is_file()]
    assert len(cached) == 1
    stamp = os.path.getmtime(cached[0] / "model.safetensors")
    # Another training seed keeps the split (split_seed) and the teacher (teacher_seed).
    assert recipe_progress(caplog) == ([], [])  # quiet
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true", "--seed", "7")
    recipe.main(flags)  # the default shows progress
    speed, _ = recipe_progress(caplog)
    assert speed_rounds_done(speed[-1])
    assert os.path.getmtime(cached[0] / "model.safetensors") == stamp
    second = json.loads((output_dir / "results.json").read_text())
    assert "baseline" not in second
    assert second["teacher"]["accuracy"] == saved["teacher"]["accuracy"]  # same teacher, same test rows


def test_recipe_reads_a_yaml_config(tiny_teacher_dir, reviews_csv, tmp_path):
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true")
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    config = tmp_path / "config.yaml"
    config.write_text("".join(f"{name.lstrip('-')}: {value}\n" for name, value in pairs.items()))
    results = recipe.main([str(config)])
    assert set(results) >= {"teacher", "student", "retention", "speedup"}


def test_recipe_rejects_a_missing_column_before_training(tiny_teacher_dir, reviews_csv, tmp_path):
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path)
    flags[flags.index("--text_column") + 1] = "body"
    with pytest.raises(ValueError, match="body"):
        recipe.main(flags)
    assert not (tmp_path / "teachers").exists()


def test_shipped_config_spells_out_the_default_run():
    types = (
        recipe.DataArguments,
        recipe.TeacherArguments,
        recipe.StudentArguments,
        recipe.SearchArguments,
        recipe.DistillationArguments,
    )
    config = str(CONFIGS / "text_classification.yaml")
    from_config = recipe.parse_recipe_args(types, recipe.DEFAULTS, [config])
    from_defaults = recipe.parse_recipe_args(types, recipe.DEFAULTS, [])
    for parsed_config, parsed_default in zip(from_config, from_defaults, strict=True):
        fields = [f.name for f in dataclasses.fields(parsed_config)]
        assert {name: getattr(parsed_config, name) for name in fields} == {
            name: getattr(parsed_default, name) for name in fields
        }


def test_a_cached_teacher_gives_the_same_student_as_a_fresh_one(tiny_teacher_dir, reviews_csv, tmp_path):
    students = []
    for _ in range(2):  # the first run fine-tunes the teacher, the second loads it from the cache
        recipe.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true"))
        students.append(AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").state_dict())
    for name, weight in students[0].items():
        torch.testing.assert_close(students[1][name], weight, rtol=0, atol=0, msg=name)


def test_text_classification_recipe_distils_from_the_cache(tiny_teacher_dir, reviews_csv, tmp_path):
    extra = ("--no_baseline", "true", "--hidden_weight", "0", "--attention_weight", "0")
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, *extra)
    flags += ["--teacher_logits_cache_dir", str(tmp_path / "logits"), "--teacher_logits_top_k", "4"]
    results = recipe.main(flags)
    assert results["distillation"]["teacher_logits_top_k"] == 4
    (folder,) = (tmp_path / "logits").iterdir()
    metadata = json.loads((folder / "teacher_cache.json").read_text())
    assert metadata["stored_top_k"] == metadata["num_classes"] == 2  # k above the class count keeps every logit


def test_recipe_refuses_a_max_seq_length_above_the_teachers_positions_before_training(
    tiny_teacher_dir, reviews_csv, tmp_path
):
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--max_seq_length", "65")  # the teacher has 64
    with pytest.raises(ValueError, match=r"max_seq_length=65 exceeds the teacher's max_position_embeddings=64, .*: "):
        recipe.main(flags)
    assert not (tmp_path / "teachers").exists()
    assert not (tmp_path / "out").exists()


def test_results_record_the_data_checks(tiny_teacher_dir, reviews_csv, tmp_path):
    from nlpkd.data import split_checks

    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true")
    results = recipe.main(flags)
    expected = split_checks(recipe.load_data(recipe.parse_args(flags)[0]))
    assert json.loads((tmp_path / "out" / "results.json").read_text())["data_checks"] == expected
    assert expected["duplicates"]["test"] > 0  # 60 rows of 8 distinct texts: the test split repeats training texts
    assert results["data_checks"] == expected


def test_a_pruned_student_starts_from_the_fine_tuned_teachers_slices(tiny_teacher_dir, reviews_csv, tmp_path):
    # max_steps 0 would train nothing but is refused by the Trainer; a zero learning rate keeps the initial weights.
    extra = ("--no_baseline", "true", "--student_init", "pruned", "--learning_rate", "0", "--warmup_steps", "0")
    recipe.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, *extra))
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    teacher_dirs = [path for path in (tmp_path / "teachers").iterdir() if (path / "config.json").is_file()]
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dirs[0])
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    # Every student classifier column is one of the fine-tuned teacher's (the kept hidden channels).
    teacher_columns = teacher.classifier.weight.T
    for column in student.classifier.weight.T:
        assert any(torch.equal(column, candidate) for candidate in teacher_columns)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "student initialisation: pruned (nlpkd.make_student); one stage" in card


def test_the_default_auto_init_prunes_a_bert_teacher_and_says_so_on_the_card(tiny_teacher_dir, reviews_csv, tmp_path):
    recipe.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--no_baseline", "true"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "student initialisation: pruned (nlpkd.make_student, by student_init=auto); one stage" in card
    assert json.loads((tmp_path / "out" / "results.json").read_text())["student_init"] == "pruned"


def test_augmented_rows_train_the_student_and_the_baseline_keeps_the_originals(
    tiny_teacher_dir, reviews_csv, tmp_path, monkeypatch
):
    trained_on = {}
    distil = recipe.distil_and_train_baseline

    def record(student, baseline, teacher, args, train_dataset, *rest, baseline_train_dataset=None, **kwargs):
        trained_on.update(student=train_dataset, baseline=baseline_train_dataset)
        return distil(
            student,
            baseline,
            teacher,
            args,
            train_dataset,
            *rest,
            baseline_train_dataset=baseline_train_dataset,
            **kwargs,
        )

    monkeypatch.setattr(recipe, "distil_and_train_baseline", record)
    results = recipe.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--augment_copies", "2"))
    originals, student_rows = trained_on["baseline"], trained_on["student"]
    added = results["augmentation"]["rows"]
    assert 0 < added <= 2 * len(originals) and len(student_rows) == len(originals) + added
    assert set(originals["label"]) == {0, 1}
    assert set(student_rows["label"][len(originals) :]) == {-100}  # taught by the teacher alone
    # The teacher body had no MLM head: one was trained on the training texts and kept with the teachers.
    assert str(tmp_path / "teachers") in results["augmentation"]["masked_lm"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"data augmentation: TinyBERT word replacement, {added:,} variants (2 per text" in card


def test_recipe_exports_the_student_to_onnx_and_int8_and_measures_them(tiny_teacher_dir, reviews_csv, tmp_path):
    extra = ("--no_baseline", "true", "--export", "onnx", "--quantize", "int8", "--disable_tqdm", "true")
    results = recipe.main(recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, *extra))
    output_dir = tmp_path / "out"
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) >= {"teacher", "student", "retention", "speedup", "student_onnx", "student_int8"}
    for name, file in (("student_onnx", "student.onnx"), ("student_int8", "student.int8.onnx")):
        entry = saved[name]
        assert set(MODEL_KEYS) | {"speedup_b1", "speedup_b32", "file", "form"} <= set(entry), name
        assert entry["file"] == file
        assert entry["size_mb"] == os.path.getsize(output_dir / file) / 1e6
        assert entry["params"] == saved["student"]["params"]
        assert entry["num_test_examples"] == 6
    # The ONNX student is the student: same predictions, logits within the export check's tolerance.
    assert saved["student_onnx"]["accuracy"] == saved["student"]["accuracy"]
    assert saved["student_onnx"]["max_logit_difference"] < 1e-4
    assert saved["student_int8"]["size_mb"] < saved["student_onnx"]["size_mb"]
    assert all(
        set(round_) == {"teacher", "student", "student_onnx", "student_int8"} for round_ in saved["speed_rounds"]
    )
    card = (output_dir / "README.md").read_text()
    assert "## Deployable forms" in card
    assert "| student_onnx |" in card and "| student_int8 |" in card
    assert f"`student.int8.onnx`: {saved['student_int8']['form']}; {saved['student_int8']['size_mb']:.1f} MB" in card


def test_recipe_refuses_export_settings_before_training(tiny_teacher_dir, reviews_csv, tmp_path, monkeypatch):
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path)
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    config = tmp_path / "config.yaml"
    config.write_text("".join(f"{name.lstrip('-')}: {value}\n" for name, value in pairs.items()) + "export: tflite\n")
    with pytest.raises(ValueError, match="export='tflite' is not a choice: pass --export with one of none, onnx"):
        recipe.main([str(config)])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(ImportError, match=r'needs onnxruntime, which is not installed: pip install "nlpkd\[export\]"'):
        recipe.main([*flags, "--export", "onnx"])
    assert not (tmp_path / "teachers").exists()
