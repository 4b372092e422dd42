"""Smoke runs of recipes/language_modeling.py on a tiny BERT body teacher and a small local .txt corpus."""

import dataclasses
import json
import logging
import math
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import recipe_progress, speed_rounds_done, tiny_bert_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertLMHeadModel,
    BertModel,
    BertTokenizerFast,
)

import nlpkd.pipeline
import nlpkd.teacher_stage
from nlpkd import report
from nlpkd.recipes import language_modeling as recipe
from nlpkd.recipes import text_classification

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
WORDS = ["good", "great", "fine", "fun", "bad", "awful", "dull", "poor", "movie", "film", "the", "was", "a"]
MODEL_KEYS = ("params", "size_mb", "latency_ms_b1", "throughput_b32")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Nothing a recipe writes by default (outputs/...) lands in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    """A tiny BERT *body* (no LM head, like the packaged MiniLM) with its tokenizer, max_position_embeddings 64."""
    folder = tmp_path_factory.mktemp("teacher")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert tokenizer.unk_token_id not in tokenizer("the movie was good")["input_ids"]
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=len(vocab), num_hidden_layers=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_corpus(path: Path, seed: int = 0, lines: int = 300) -> str:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(lines)]
    path.write_text("\n".join(texts) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def lm_flags(teacher_dir: str, train_file: str, tmp_path: Path, objective: str, *extra: str) -> list[str]:
    return [
        "--objective", objective,
        "--teacher_model_name_or_path", teacher_dir,
        "--train_file", train_file,
        "--teacher_cache_dir", str(tmp_path / "teachers"),
        "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2",
        "--block_size", "16",
        "--max_train_samples", "64",
        "--max_eval_samples", "8",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8",
        "--student_num_layers", "1",
        "--student_hidden_size", "16",
        "--student_num_heads", "4",
        "--student_intermediate_size", "20",
        "--teacher_num_train_epochs", "1",
        "--save_strategy", "no",
        "--eval_strategy", "no",
        "--use_cpu", "true",
        *extra,
    ]  # fmt: skip


def read_results(output_dir: Path, returned: dict) -> dict:
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(returned))
    return saved


def check_cost_entries(saved: dict, names: tuple[str, ...]) -> None:
    for name in names:
        assert set(MODEL_KEYS) <= set(saved[name]), name
        assert all(math.isfinite(saved[name][key]) and saved[name][key] > 0 for key in MODEL_KEYS), name
    assert saved["student"]["params"] < saved["teacher"]["params"]
    # The models were timed in turns: the speed-up is the median of the per-round ratios, not the ratio of the
    # median latencies (which a load present in some rounds moves).
    assert [set(round_) for round_ in saved["speed_rounds"]] == [set(names)] * report.SPEED_ROUNDS
    recomputed = report.median_speed(saved["speed_rounds"])["student"]["speedup_b1"]
    assert saved["speedup"] == saved["student"]["speedup_b1"] == pytest.approx(recomputed, rel=1e-12)


def check_lm_results(saved: dict, objective: str) -> None:
    check_cost_entries(saved, ("teacher", "student", "baseline"))
    for name in ("teacher", "student", "baseline"):
        assert math.isfinite(saved[name]["perplexity"]) and saved[name]["perplexity"] > 1, name
    assert saved["baseline"]["params"] == saved["student"]["params"]
    assert saved["objective"] == objective
    assert saved["block_size"] == 16
    assert 1 <= saved["num_eval_blocks"] <= 8
    assert saved["distillation"]["hard_label_weight"] == saved["distillation"]["logit_weight"] == 0.5
    assert "general" not in saved


def cached_teachers(cache_dir: Path) -> dict[str, float]:
    """Every file under the teacher cache with its modification time."""
    return {str(path.relative_to(cache_dir)): path.stat().st_mtime_ns for path in cache_dir.rglob("*")}


class NoTeacherTraining:
    def __init__(self, *args, **kwargs):
        raise AssertionError("the teacher was fine-tuned again instead of loaded from teacher_cache_dir")


def test_mlm_distils_a_masked_lm_and_reuses_the_fine_tuned_teacher(
    teacher_dir, corpus_file, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="nlpkd.progress")
    flags = lm_flags(teacher_dir, corpus_file, tmp_path, "mlm")
    saved = read_results(tmp_path / "out", recipe.main([*flags, "--disable_tqdm", "true"]))  # quiet
    check_lm_results(saved, "mlm")
    table = capsys.readouterr().out
    assert any(line.startswith("model ") and "perplexity" in line for line in table.splitlines())

    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    assert isinstance(student, BertForMaskedLM)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path / "out" / "baseline"), BertForMaskedLM)

    # Stage 1 gave the body an LM head and kept it; a second run loads it instead of training again.
    cache_dir = tmp_path / "teachers"
    cached = [path for path in cache_dir.iterdir() if (path / "config.json").is_file()]
    assert len(cached) == 1
    assert AutoConfig.from_pretrained(cached[0]).architectures == ["BertForMaskedLM"]
    before = cached_teachers(cache_dir)
    monkeypatch.setattr(nlpkd.teacher_stage, "Trainer", NoTeacherTraining)
    assert recipe_progress(caplog) == ([], [])  # quiet
    again = read_results(tmp_path / "out", recipe.main([*flags, "--no_baseline", "true"]))
    speed, stages = recipe_progress(caplog)
    assert speed_rounds_done(speed[-1])
    assert stages == [  # none in the first run
        ["teacher", "perplexity"],
        ["student", "perplexity"],
    ]
    assert cached_teachers(cache_dir) == before
    assert "baseline" not in again
    # The same teacher on the same fixed masks: the same perplexity.
    assert again["teacher"]["perplexity"] == pytest.approx(saved["teacher"]["perplexity"], rel=1e-6)


def test_clm_turns_the_body_into_a_causal_lm_and_distils_it(teacher_dir, corpus_file, tmp_path):
    saved = read_results(tmp_path / "out", recipe.main(lm_flags(teacher_dir, corpus_file, tmp_path, "clm")))
    check_lm_results(saved, "clm")
    for folder in (tmp_path / "out", tmp_path / "out" / "baseline"):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert isinstance(model, BertLMHeadModel), folder
        assert model.config.is_decoder is True
    [cached] = [path for path in (tmp_path / "teachers").iterdir() if (path / "config.json").is_file()]
    teacher_config = AutoConfig.from_pretrained(cached)
    assert teacher_config.architectures == ["BertLMHeadModel"] and teacher_config.is_decoder is True


def classification_flags(teacher_dir: str, student_dir: str, tmp_path: Path) -> list[str]:
    lines = ["review,sentiment"]
    for index in range(60):
        polar = WORDS[index % 4 + (0 if index % 2 == 0 else 4)]
        lines.append(f"the movie was {polar} a film,{'pos' if index % 2 == 0 else 'neg'}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    return [
        "--teacher_model_name_or_path", teacher_dir,
        "--student_model_name_or_path", student_dir,
        "--train_file", str(tmp_path / "reviews.csv"),
        "--text_column", "review",
        "--label_column", "sentiment",
        "--max_seq_length", "64",  # the tiny teacher's position limit
        "--teacher_cache_dir", str(tmp_path / "classifier_teachers"),
        "--output_dir", str(tmp_path / "classifier"),
        "--max_steps", "2",
        "--per_device_train_batch_size", "8",
        "--no_baseline", "true",
        "--save_strategy", "no",
        "--eval_strategy", "no",
        "--use_cpu", "true",
    ]  # fmt: skip


def test_general_distils_a_body_that_initialises_the_classification_student(
    teacher_dir, corpus_file, tmp_path, monkeypatch
):
    # --logging_steps 1: every step logs its component losses, so the train_* entries are checked too.
    flags = lm_flags(teacher_dir, corpus_file, tmp_path, "general", "--logging_steps", "1")
    saved = read_results(tmp_path / "out", recipe.main(flags))
    check_cost_entries(saved, ("teacher", "student"))
    assert "baseline" not in saved
    assert not any("perplexity" in saved[name] for name in ("teacher", "student"))
    losses = saved["general"]
    assert {"loss", "hidden_loss", "attention_loss", "train_hidden_loss", "train_attention_loss"} <= set(losses)
    assert all(math.isfinite(value) and value >= 0 for value in losses.values())
    assert losses["loss"] == pytest.approx(losses["hidden_loss"] + losses["attention_loss"], rel=1e-4)
    assert saved["distillation"]["hard_label_weight"] == saved["distillation"]["logit_weight"] == 0
    assert not (tmp_path / "teachers").exists()  # a bare encoder teacher needs no fine-tuning

    general_dir = str(tmp_path / "out")
    body = AutoModel.from_pretrained(general_dir)
    assert type(body) is BertModel and body.config.num_hidden_layers == 1
    classifier = AutoModelForSequenceClassification.from_pretrained(general_dir, num_labels=2)
    body_state = body.state_dict()
    for name, value in classifier.bert.state_dict().items():
        if name.startswith(("embeddings.", "encoder.")):
            assert torch.equal(value, body_state[name]), name

    # The classification recipe's student starts from the general body.
    built = {}

    def spy_build_student(*args, **kwargs):
        student = nlpkd.pipeline.build_student(*args, **kwargs)
        built.update({name: value.detach().clone() for name, value in student.bert.encoder.state_dict().items()})
        return student

    monkeypatch.setattr(text_classification, "build_student", spy_build_student)
    results = text_classification.main(classification_flags(teacher_dir, general_dir, tmp_path))
    assert built and all(torch.equal(value, body_state[f"encoder.{name}"]) for name, value in built.items())
    classifier_saved = read_results(tmp_path / "classifier", results)
    assert {"teacher", "student"} <= set(classifier_saved) and 0 <= classifier_saved["student"]["accuracy"] <= 1
    distilled = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier")
    assert (distilled.config.num_hidden_layers, distilled.config.hidden_size) == (1, 16)


def test_general_reports_training_losses_of_a_run_shorter_than_logging_steps(teacher_dir, corpus_file, tmp_path):
    results = recipe.main(lm_flags(teacher_dir, corpus_file, tmp_path, "general"))
    assert math.isfinite(results["general"]["hidden_loss"])


def test_general_runs_without_the_attention_loss(teacher_dir, corpus_file, tmp_path):
    flags = lm_flags(teacher_dir, corpus_file, tmp_path, "general", "--logging_steps", "1", "--attention_weight", "0")
    results = recipe.main(flags)
    assert math.isfinite(results["general"]["hidden_loss"])


def test_other_training_blocks_get_another_fine_tuned_teacher(teacher_dir, corpus_file, tmp_path):
    for samples in ("64", "16"):  # the 16 blocks are the first 16 of the 64: the same first 5
        flags = lm_flags(teacher_dir, corpus_file, tmp_path, "mlm", "--no_baseline", "true")
        flags[flags.index("--max_train_samples") + 1] = samples
        recipe.main(flags)
    assert len([path for path in (tmp_path / "teachers").iterdir() if (path / "config.json").is_file()]) == 2


def test_objective_picks_its_defaults():
    data_args, _, _, args = recipe.parse_args([])
    assert data_args.objective == "mlm"
    assert (args.hard_label_weight, args.logit_weight, args.hidden_weight, args.attention_weight) == (0.5, 0.5, 0, 0)
    assert args.output_dir == os.path.join("outputs", "language_modeling", "mlm")
    assert data_args.max_train_samples == 3200 and args.num_train_epochs == 1 and not args.prediction_loss_only

    data_args, _, _, args = recipe.parse_args(["--objective", "general"])
    assert data_args.objective == "general"
    assert (args.hard_label_weight, args.logit_weight, args.hidden_weight, args.attention_weight) == (0, 0, 1, 1)
    assert args.output_dir == os.path.join("outputs", "language_modeling", "general")
    assert data_args.max_train_samples is None and args.prediction_loss_only
    general_epochs = recipe.OBJECTIVE_DEFAULTS["general"]["num_train_epochs"]
    assert args.num_train_epochs == general_epochs != recipe.COMMON_DEFAULTS["num_train_epochs"]

    data_args, _, _, args = recipe.parse_args(["--objective=clm"])
    assert data_args.objective == "clm" and (args.hard_label_weight, args.logit_weight) == (0.5, 0.5)
    assert args.output_dir == os.path.join("outputs", "language_modeling", "clm")


def test_flags_override_the_objective_defaults():
    flags = ["--objective", "general", "--hidden_weight", "2", "--max_train_samples", "10", "--output_dir", "here"]
    data_args, _, _, args = recipe.parse_args(flags)
    assert (args.hard_label_weight, args.logit_weight, args.hidden_weight) == (0, 0, 2)
    assert data_args.max_train_samples == 10 and args.output_dir == "here"
    _, _, _, args = recipe.parse_args(["--logit_weight", "0", "--num_train_epochs", "3"])
    assert (args.hard_label_weight, args.logit_weight, args.num_train_epochs) == (0.5, 0, 3)


def test_a_config_file_chooses_the_objective_defaults(tmp_path):
    config = tmp_path / "general.yaml"
    config.write_text("objective: general\nattention_weight: 3\nblock_size: 64\n")
    data_args, _, _, args = recipe.parse_args([str(config)])
    assert data_args.objective == "general" and data_args.block_size == 64
    assert (args.hard_label_weight, args.logit_weight, args.hidden_weight, args.attention_weight) == (0, 0, 1, 3)
    assert args.output_dir == os.path.join("outputs", "language_modeling", "general")


def test_an_unknown_objective_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="objective must be one of .* got 'seq2seq'"):
        recipe.parse_args(["--objective", "seq2seq"])
    config = tmp_path / "config.yaml"
    config.write_text("objective: translation\n")
    with pytest.raises(ValueError, match="got 'translation'"):
        recipe.parse_args([str(config)])


@pytest.mark.parametrize("objective", ["mlm", "clm", "general"])
def test_shipped_config_spells_out_the_default_run(objective):
    config = str(CONFIGS / f"language_modeling_{objective}.yaml")
    from_config = recipe.parse_args([config])
    from_defaults = recipe.parse_args(["--objective", objective])
    for parsed_config, parsed_default in zip(from_config, from_defaults, strict=True):
        assert dataclasses.asdict(parsed_config) == dataclasses.asdict(parsed_default)
    assert from_config[0].objective == objective


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--block_size", "65"), "block_size=65 exceeds the teacher's max_position_embeddings=64"),
        (("--block_size", "1"), "block_size must be at least 2, got 1"),
        (("--block_size", "64", "--validation_fraction", "0.01"), "The validation split is shorter than one block"),
        (("--validation_fraction", "1.5"), "validation_fraction must be between 0 and 1"),
    ],
)
def test_bad_input_fails_before_training(teacher_dir, corpus_file, tmp_path, extra, message):
    flags = lm_flags(teacher_dir, corpus_file, tmp_path, "mlm", *extra)
    with pytest.raises(ValueError, match=message):
        recipe.main(flags)
    assert not (tmp_path / "teachers").exists()
    assert not (tmp_path / "out").exists()
