"""Text-classification stages: tokenise, get a fine-tuned teacher, evaluate teacher/student/baseline."""

import logging

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    TrainingArguments,
)

from . import report
from .fingerprint import fingerprint
from .metrics import load_metric
from .pipeline import finetune_teacher_once, has_trained_head
from .recipe_args import TeacherArguments

logger = logging.getLogger(__name__)


def tokenize(data: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Token ids (unpadded: the collator pads each batch) and `label`; the `text` column is dropped."""
    return data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def label_names(data: DatasetDict) -> list[str]:
    return list(data["train"].features["label"].names)


def data_digest(data: DatasetDict) -> str:
    """A digest of the texts and labels of every split (stable across runs, unlike in-memory fingerprints)."""
    return fingerprint({name: [split["text"], split["label"]] for name, split in data.items()})


def accuracy_and_f1(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 from the packaged offline metric modules."""
    return {
        **load_metric("accuracy").compute(predictions=predictions, references=references),
        **load_metric("f1").compute(predictions=predictions, references=references, average="macro"),
    }


def compute_accuracy_f1(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer."""
    return accuracy_and_f1(np.argmax(eval_prediction.predictions, axis=-1), eval_prediction.label_ids)


def prepare_teacher(
    teacher_args: TeacherArguments,
    teacher_path: str,
    data: DatasetDict,
    tokenized: DatasetDict,
    tokenizer,
    args: TrainingArguments,
    max_seq_length: int,
) -> PreTrainedModel:
    """The teacher with a trained classification head for these labels.

    A checkpoint that already has a trained sequence-classification head for the same labels is used as it is;
    otherwise (or with `--finetune_teacher`) the teacher is fine-tuned once and kept under `teacher_cache_dir`,
    keyed by teacher, data and settings, so the next run loads it instead.
    """
    names = label_names(data)
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if not teacher_args.finetune_teacher and has_trained_head(teacher_path, "ForSequenceClassification"):
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
        if list(teacher.config.id2label.values()) != names:
            raise ValueError(
                f"The teacher {teacher_path!r} was trained for labels {list(teacher.config.id2label.values())}, "
                f"but the data has {names}. Pass --finetune_teacher to train a new head on this data."
            )
        return teacher
    return finetune_teacher_once(
        AutoModelForSequenceClassification,
        teacher_path,
        ("sequence-classification", data_digest(data), max_seq_length),
        teacher_args,
        args,
        tokenized["train"],
        DataCollatorWithPadding(tokenizer),
        tokenizer,
        ignore_mismatched_sizes=True,
        **labels,
    )


@torch.inference_mode()
def predict_labels(model: PreTrainedModel, dataset, tokenizer, batch_size: int = 64) -> np.ndarray:
    model.eval()
    features = dataset.remove_columns("label") if "label" in dataset.column_names else dataset
    loader = DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    predictions = [model(**batch.to(model.device)).logits.argmax(-1).cpu().numpy() for batch in loader]
    return np.concatenate(predictions)


def evaluate_classifiers(
    models: dict[str, PreTrainedModel],
    tokenizer,
    tokenized_test,
    test_texts: list[str],
    max_length: int,
    show_progress: bool = True,
) -> dict:
    """Each model's quality on the test split (accuracy with its 95 % interval, macro F1, and the
    `report.classification_verdict` on them) and cost (params, MB, and `report.measure_speed`'s batch-1 latency,
    batch-32 throughput and speed-ups over the "teacher", the models timed in turns); plus the split's
    `majority_class_rate` and the timing rounds (`speed_rounds`), ready for results.json (the recipe adds the
    `warnings` once all of it is there: `report.health_warnings`). `show_progress` logs the rounds' progress."""
    references = np.array(tokenized_test["label"])
    majority_rate = report.majority_class_rate(references.tolist())
    typical_text = report.median_length_text(test_texts)
    timers = {
        name: report.forward_timer(model, tokenizer, typical_text, test_texts, max_length)
        for name, model in models.items()
    }
    speed, rounds = report.measure_speed(timers, show_progress=show_progress)
    results = {}
    for name, model in models.items():
        quality = accuracy_and_f1(predict_labels(model, tokenized_test, tokenizer), references)
        quality["accuracy_ci"] = report.accuracy_confidence_interval(quality["accuracy"], len(references))
        results[name] = {
            **quality,
            "verdict": report.classification_verdict(quality, majority_rate),
            "params": report.count_parameters(model),
            "size_mb": report.model_size_mb(model),
            **speed[name],
            "num_test_examples": len(references),
        }
    results["majority_class_rate"] = majority_rate
    results["speed_rounds"] = rounds
    return results
