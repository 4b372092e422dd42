"""Model cards, plots and Hub pushes of the student alone (uploads intercepted at the huggingface_hub boundary)."""

import concurrent.futures
import os
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import make_classification_dataset, tiny_bert_config
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.repocard_data import model_index_to_eval_results

# The classification recipe's own tests make its tiny teacher and data.
from test_recipe_text_classification import recipe_flags, reviews_csv, tiny_teacher_dir  # noqa: F401
from test_translation import marian_dir, pairs_tsv  # noqa: F401
from test_translation import recipe_flags as translation_flags
from transformers import BertForSequenceClassification, BertTokenizerFast
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.distillation_model import PROJECTIONS_NAME
from nlpkd.hub import HubPushError, hub_files
from nlpkd.model_card import CITATIONS, hardware, model_card, non_default_arguments, write_model_card
from nlpkd.plots import plot_loss_curves, plot_quality_vs_latency
from nlpkd.recipes import text_classification, translation

PNG_HEADER = b"\x89PNG\r\n\x1a\n"
CLASSIFICATION_RESULTS = {
    "teacher": {"accuracy": 0.85, "accuracy_ci": 0.02, "f1": 0.84, "params": 22_713_216, "size_mb": 90.9,
                "latency_ms_b1": 12.0, "throughput_b32": 310.0},
    "student": {"accuracy": 0.8125, "accuracy_ci": 0.025, "f1": 0.8, "params": 4_386_178, "size_mb": 17.5,
                "latency_ms_b1": 3.0, "throughput_b32": 1500.0},
    "baseline": {"accuracy": 0.7, "f1": 0.69, "params": 4_386_178, "size_mb": 17.5, "latency_ms_b1": 3.1},
    "retention": 0.956, "speedup": 4.0,
}  # fmt: skip
TRANSLATION_RESULTS = {
    "teacher": {"bleu": 20.42, "bleu_ci": 0.9, "chrf": 45.1, "params": 40_000_000, "size_mb": 160.0,
                "latency_ms_b1": 250.0},
    "student": {"bleu": 15.37, "bleu_ci": 0.8, "chrf": 40.2, "params": 20_000_000, "size_mb": 80.0,
                "latency_ms_b1": 100.0},
    "baseline": {"bleu": 14.1, "chrf": 39.0, "params": 20_000_000, "size_mb": 80.0, "latency_ms_b1": 101.0},
    "retention": 0.753, "speedup": 2.5, "sequence_level_kd": True,
}  # fmt: skip
LOG_HISTORY = [
    {"loss": 2.0, "hard_loss": 0.7, "logit_loss": 0.9, "hidden_loss": 3.0, "attention_loss": 1.5, "step": 1},
    {"loss": 1.2, "hard_loss": 0.6, "logit_loss": 0.5, "hidden_loss": 2.0, "attention_loss": 1.0, "step": 2},
    {"eval_loss": 0.6, "eval_accuracy": 0.8, "step": 2},
    {"train_loss": 1.6, "train_runtime": 1.0, "step": 2},
]


def card_arguments(**changes) -> dict:
    arguments = dict(
        model_name="tiny-student",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        setup={"losses": "hard_loss × 0.5; logit_loss × 0.5 (kl of the logits at T = 2.0)"},
        training_arguments={"learning_rate": 0.0002, "num_train_epochs": 5},
        hardware={"CPU": "a test CPU"},
        command="python recipes/text_classification.py --num_train_epochs 5",
        citations=["hinton", "tinybert", "minilm"],
        pipeline_tag="text-classification",
        language="en",
        license="apache-2.0",
        dataset_name="movie-review sentiment snippets",
        eval_split="test",
    )
    arguments.update(changes)
    return arguments


def parsed(card: ModelCard) -> ModelCard:
    """The card as the Hub reads it: from its text alone."""
    return ModelCard(str(card))


def test_classification_card_metadata_parses_with_the_measured_scores():
    card = parsed(model_card(results=CLASSIFICATION_RESULTS, **card_arguments()))
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"distillation", "nlpkd"} <= set(data.tags)
    assert (data.pipeline_tag, data.language, data.license) == ("text-classification", "en", "apache-2.0")
    model_name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert model_name == "tiny-student"
    assert {(r.metric_type, r.metric_value) for r in results} == {("accuracy", 0.8125), ("f1", 0.8)}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {
        ("text-classification", "movie-review-sentiment-snippets", "test")
    }


def test_classification_card_body_has_the_table_setup_command_and_citations():
    text = str(model_card(results=CLASSIFICATION_RESULTS, **card_arguments()))
    assert "| student | 81.2 ± 2.5 | 80.0 | 4.39 | 17.5 | 3.0 | 1500.0 | 4.0× | 95.6% |" in text
    assert "| baseline | 70.0 | 69.0 | 4.39 | 17.5 | 3.1 | - | 3.9× | 82.4% |" in text
    assert "retention of teacher accuracy" in text
    # results.json's other entries (the distillation settings) are not rows of the table.
    settings = {"temperature": 2.0, "hidden_weight": 1.0, "layer_map": [1, 3, 4, 6]}
    with_settings = str(model_card(results={**CLASSIFICATION_RESULTS, "distillation": settings}, **card_arguments()))
    assert "| distillation |" not in with_settings
    assert with_settings.count("| teacher |") == with_settings.count("| student |") == 1
    assert "hard_loss × 0.5; logit_loss × 0.5 (kl of the logits at T = 2.0)" in text
    assert "| `learning_rate` | `0.0002` |" in text
    assert "python recipes/text_classification.py --num_train_epochs 5" in text
    for key in ("hinton", "tinybert", "minilm"):
        assert CITATIONS[key] in text
    assert CITATIONS["kim_rush"] not in text


def test_card_shows_the_search_that_chose_the_setting():
    search = {
        "metric": "eval_accuracy", "direction": "maximize", "best_trial": 1, "best_score": 0.8125,
        "best_settings": {"temperature": 3.5, "hard_label_weight": 0.25, "logit_weight": 0.75},
        "trials": [
            {"trial": 0, "state": "COMPLETE", "score": 0.75, "temperature": 1.25, "hard_label_weight": 0.5,
             "logit_weight": 0.5},
            {"trial": 1, "state": "COMPLETE", "score": 0.8125, "temperature": 3.5, "hard_label_weight": 0.25,
             "logit_weight": 0.75},
            {"trial": 2, "state": "PRUNED", "score": None, "temperature": 7.0, "hard_label_weight": 0.0,
             "logit_weight": 1.0},
        ],
    }  # fmt: skip
    text = str(model_card(results={**CLASSIFICATION_RESULTS, "search": search}, **card_arguments()))
    assert "## Temperature and weight search" in text
    assert (
        "trial 1 of 3, eval_accuracy 0.8125 (maximize), at temperature = 3.5, hard_label_weight = 0.25, "
        "logit_weight = 0.75" in text
    )
    assert "| trial | `temperature` | `hard_label_weight` | `logit_weight` | eval_accuracy |" in text
    assert "| 0 | 1.25 | 0.5 | 0.5 | 0.75 |" in text
    assert "| 2 | 7 | 0 | 1 | pruned |" in text
    assert "Temperature and weight search" not in str(model_card(results=CLASSIFICATION_RESULTS, **card_arguments()))


def test_translation_card_has_bleu_in_the_model_index_and_both_languages():
    arguments = card_arguments(
        pipeline_tag="translation",
        language=["en", "es"],
        datasets=["opus_books"],
        dataset_name="opus_books",
        dataset_config="en-es",
        citations=["hinton", "kim_rush"],
    )
    card = parsed(model_card(results=TRANSLATION_RESULTS, **arguments))
    assert card.data.language == ["en", "es"]
    assert card.data.datasets == ["opus_books"]
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {(r.metric_type, r.metric_value) for r in results} == {("bleu", 15.37), ("chrf", 40.2)}
    assert {(r.dataset_type, r.dataset_config) for r in results} == {("opus_books", "en-es")}
    assert "| student | 15.4 ± 0.8 | 40.2 | 20.00 | 80.0 | 100.0 | - | 2.5× | 75.3% |" in card.text
    assert "retention of teacher bleu" in card.text
    assert CITATIONS["kim_rush"] in card.text


def test_card_warns_about_a_model_no_better_than_the_majority_class():
    useless_student = {**CLASSIFICATION_RESULTS["student"], "accuracy": 0.52, "accuracy_ci": 0.03, "f1": 0.34}
    results = {**CLASSIFICATION_RESULTS, "student": useless_student, "majority_class_rate": 0.523}
    results["speed_rounds"] = [{}] * 10
    text = parsed(model_card(results=results, **card_arguments())).text
    warnings = text.split("## ⚠️ Warnings\n\n", 1)[1].split("\n## Results", 1)[0]
    assert warnings.strip().splitlines() == [
        "- **student is no better than always predicting the majority class (accuracy 52.0% ± 3.0% vs majority-class "
        "rate 52.3%; macro-F1 34.0%). Likely causes: too few training steps for the loss set: the hidden-state and "
        "attention losses, when on, outweigh the prediction loss early in training, so the classifier learns last "
        "(raise --num_train_epochs, or distil from the logits alone with --hidden_weight 0 --attention_weight 0); a "
        "learning rate too high or too low for this model (try --learning_rate 1e-4 or 5e-4); or imbalanced classes, "
        "which reward predicting the frequent one alone.**"
    ]
    assert "Majority-class rate of the test split: 52.3 %" in text
    assert "timed in turns over 10 rounds; each speed-up is the median of the\nper-round ratios" in text
    healthy = str(model_card(results={**CLASSIFICATION_RESULTS, "majority_class_rate": 0.523}, **card_arguments()))
    assert "Warnings" not in healthy and "Majority-class rate of the test split: 52.3 %" in healthy
    assert "timed in turns" not in healthy  # no rounds recorded: an earlier results.json


def test_card_without_results_says_so_and_has_no_model_index(tmp_path):
    local_teacher = tmp_path / "teacher"
    local_teacher.mkdir()
    card = parsed(model_card(**card_arguments(base_model=str(local_teacher))))
    assert card.data.base_model is None  # a local path is no Hub id, and must not leak into the metadata
    assert card.data.eval_results is None
    assert "Not measured" in card.text


def assert_png(path) -> None:
    content = open(path, "rb").read()
    assert content.startswith(PNG_HEADER) and len(content) > 1000


def test_plots_are_pngs_and_skip_what_has_no_data(tmp_path):
    assert_png(plot_quality_vs_latency(CLASSIFICATION_RESULTS, str(tmp_path / "quality.png")))
    assert_png(plot_quality_vs_latency(TRANSLATION_RESULTS, str(tmp_path / "bleu.png")))
    assert_png(plot_loss_curves(LOG_HISTORY, str(tmp_path / "losses.png")))
    general = {"teacher": {"params": 10, "latency_ms_b1": 2.0}, "student": {"params": 5, "latency_ms_b1": 1.0}}
    assert plot_quality_vs_latency(general, str(tmp_path / "none.png")) is None
    assert plot_loss_curves(LOG_HISTORY[2:], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


def test_written_card_shows_the_plots_it_wrote_and_removes_stale_ones(tmp_path):
    path = write_model_card(str(tmp_path), results=CLASSIFICATION_RESULTS, log_history=LOG_HISTORY, **card_arguments())
    text = open(path, encoding="utf-8").read()
    assert "](quality_vs_latency.png)" in text and "](loss_curves.png)" in text
    assert_png(tmp_path / "quality_vs_latency.png")
    assert_png(tmp_path / "loss_curves.png")
    write_model_card(str(tmp_path), log_history=[], **card_arguments())  # e.g. save_model before any result
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


def test_training_arguments_on_the_card_are_the_changed_ones_without_tokens(tmp_path):
    args = DistillationArguments(
        output_dir=str(tmp_path), learning_rate=1e-4, hidden_weight=1.0, use_cpu=True, report_to="none", hub_token="x"
    )
    assert non_default_arguments(args) == {
        "output_dir": str(tmp_path),
        "learning_rate": 1e-4,
        "use_cpu": True,
        "hidden_weight": 1.0,
    }


def test_hardware_names_the_cpu_and_torch():
    info = hardware(torch.device("cpu"))
    assert info["CPU"] and f"torch {torch.__version__}" in info["software"]


# ---- pushes: what leaves the machine ----


@pytest.fixture
def hub(monkeypatch):
    """HfApi.create_repo and upload_folder intercepted: each upload records the files it would send (selected by
    huggingface_hub's own allow/ignore filtering) and the card's text, instead of contacting the Hub."""
    record = SimpleNamespace(repos=[], uploads=[])

    def create_repo(self, repo_id, **kwargs):
        record.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        operations = self._prepare_upload_folder_additions(
            folder_path,
            "",
            allow_patterns=allow_patterns,
            ignore_patterns=[*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS],
        )
        files = sorted(operation.path_in_repo for operation in operations)
        readme = os.path.join(folder_path, "README.md")
        card = open(readme, encoding="utf-8").read() if "README.md" in files else None
        record.uploads.append(SimpleNamespace(repo_id=repo_id, folder=folder_path, files=files, card=card, **kwargs))
        commit = SimpleNamespace(oid="0" * 40)
        if kwargs.get("run_as_future"):
            future = concurrent.futures.Future()
            future.set_result(commit)
            return future
        return commit

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kwargs: None)  # a POST to the Hub
    return record


@pytest.fixture
def tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{index}" for index in range(94))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def make_trainer(tmp_path, tokenizer, **changes) -> DistillationTrainer:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    student = BertForSequenceClassification(
        tiny_bert_config(hidden_size=16, num_hidden_layers=2, intermediate_size=20)
    )
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        hidden_weight=1.0,  # widths 16 -> 32: trainable projections, which must stay local
        attention_weight=1.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        push_to_hub=True,
        hub_model_id="someone/tiny-student",
    )
    settings.update(changes)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationArguments(**settings),
        train_dataset=make_classification_dataset(),
        processing_class=tokenizer,
    )


STUDENT_FILES = ["README.md", "config.json", "loss_curves.png", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"]  # fmt: skip


def test_push_uploads_the_student_alone(tmp_path, tokenizer, hub):
    trainer = make_trainer(tmp_path, tokenizer)
    assert hub.repos == []  # no Hub call before training: the repo is created by the first push
    trainer.train()
    output_dir = tmp_path / "out"
    checkpoint = output_dir / f"{PREFIX_CHECKPOINT_DIR}-4"
    assert (checkpoint / PROJECTIONS_NAME).is_file() and (checkpoint / "optimizer.pt").is_file()
    # Pushes during training (hub_strategy every_save) carry the student's files alone.
    assert [upload.commit_message for upload in hub.uploads] == [
        "Training in progress, step 2",
        "Training in progress, step 4",
    ]
    for upload in hub.uploads:
        assert upload.files == STUDENT_FILES
    # Things that must never leave, planted next to the student.
    (output_dir / "results.json").write_text("{}")
    (output_dir / "baseline").mkdir()
    (output_dir / "baseline" / "model.safetensors").write_bytes(b"baseline")
    (output_dir / "baseline" / "plot.png").write_bytes(b"baseline")

    trainer.push_to_hub(results=CLASSIFICATION_RESULTS, tasks="text-classification", dataset="reviews")

    final = hub.uploads[-1]
    assert (final.repo_id, final.commit_message, final.folder) == (
        "someone/tiny-student",
        "End of training",
        str(output_dir),
    )
    assert final.files == sorted([*STUDENT_FILES, "quality_vs_latency.png"])
    assert hub.repos == ["someone/tiny-student"]
    card = ModelCard(final.card)
    assert card.data.pipeline_tag == "text-classification"
    assert "| student | 81.2 ± 2.5 |" in card.text
    assert "hidden_loss × 1.0" in card.text and "layer map" in card.text
    # save_model writes the same student folder locally: no pickled arguments, no projections.
    assert hub_files(str(output_dir)) == final.files
    assert not (output_dir / "training_args.bin").exists() and not (output_dir / PROJECTIONS_NAME).exists()


def test_push_with_the_hub_offline_fails_after_saving_and_says_what_to_do(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    trainer = make_trainer(tmp_path, tokenizer, max_steps=1, save_strategy="no")
    trainer.train()
    with pytest.raises(HubPushError, match="push_student_folder") as raised:
        trainer.push_to_hub()
    message = str(raised.value)
    output_dir = str(tmp_path / "out")
    assert f"The student is saved in {output_dir}" in message and "hf auth login" in message
    assert all(name in os.listdir(output_dir) for name in ("model.safetensors", "config.json", "README.md"))


def test_push_without_a_token_fails_after_saving(tmp_path, tokenizer, monkeypatch):
    def create_repo(self, repo_id, **kwargs):
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    trainer = make_trainer(tmp_path, tokenizer, max_steps=1, save_strategy="no")
    trainer.train()
    with pytest.raises(HubPushError, match="LocalTokenNotFoundError: Token is required") as raised:
        trainer.push_to_hub()
    assert "hf auth login" in str(raised.value)
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
def test_hub_strategies_that_upload_checkpoints_are_refused(tmp_path, strategy):
    with pytest.raises(ValueError, match=f"hub_strategy='{strategy}' uploads whole checkpoints"):
        DistillationArguments(output_dir=str(tmp_path), push_to_hub=True, hub_strategy=strategy)
    DistillationArguments(output_dir=str(tmp_path), hub_strategy=strategy)  # without push_to_hub it changes nothing


def test_classification_recipe_publishes_the_student_alone_with_its_card(
    tiny_teacher_dir,  # noqa: F811
    reviews_csv,  # noqa: F811
    tmp_path,
    hub,
):
    flags = recipe_flags(tiny_teacher_dir, reviews_csv, tmp_path, "--logging_steps", "1", "--push_to_hub", "true")
    results = text_classification.main([*flags, "--hub_model_id", "someone/tiny-student"])

    output_dir = str(tmp_path / "out")
    assert {(upload.repo_id, upload.folder) for upload in hub.uploads} == {("someone/tiny-student", output_dir)}
    final = hub.uploads[-1]  # the baseline, results.json and checkpoints stay local
    assert final.files == sorted([*STUDENT_FILES, "quality_vs_latency.png"])
    card = ModelCard(final.card)
    assert card.data.pipeline_tag == "text-classification" and card.data.base_model is None  # a local teacher
    assert f"| student | {results['student']['accuracy'] * 100:.1f} ± " in card.text
    assert "python recipes/text_classification.py --teacher_model_name_or_path" in card.text
    assert "trained on this task once and kept for reuse in" in card.text
    assert open(os.path.join(output_dir, "README.md"), encoding="utf-8").read() == final.card


def test_translation_recipe_publishes_the_student_with_both_tokenizers(
    marian_dir,  # noqa: F811
    pairs_tsv,  # noqa: F811
    tmp_path,
    hub,
):
    flags = translation_flags(marian_dir, pairs_tsv, tmp_path, "--logging_steps", "1", "--push_to_hub", "true")
    results = translation.main([*flags, "--hub_model_id", "someone/tiny-translator"])

    final = hub.uploads[-1]
    assert final.repo_id == "someone/tiny-translator" and len(hub.uploads) == 1  # save_strategy no: one push
    tokenizer_files = ["tokenizer.json", "tokenizer_config.json"]
    assert final.files == sorted(
        [
            *("README.md", "config.json", "generation_config.json", "loss_curves.png", "model.safetensors"),
            *("quality_vs_latency.png", *tokenizer_files),
            *(f"target_tokenizer/{name}" for name in tokenizer_files),  # the decoder's side
        ]
    )
    card = ModelCard(final.card)
    assert (card.data.pipeline_tag, card.data.language) == ("translation", ["en", "es"])
    _, scores = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {(score.metric_type, score.metric_value) for score in scores} == {
        ("bleu", results["student"]["bleu"]),
        ("chrf", results["student"]["chrf"]),
    }
    assert CITATIONS["kim_rush"] in card.text
    assert "training targets: sequence-level: the teacher's 2 best beam-search translations of each of" in card.text
    assert "- decoding: student greedy against teacher beam 2, batch 1" in card.text
