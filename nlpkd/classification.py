"""Text-classification stages: tokenise, vet a trained teacher's labels, evaluate teacher/student/baseline."""

import logging

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PreTrainedModel

from . import report
from .metrics import load_metric

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


def accuracy_and_f1(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 from the packaged offline metric modules."""
    return {
        **load_metric("accuracy").compute(predictions=predictions, references=references),
        **load_metric("f1").compute(predictions=predictions, references=references, average="macro"),
    }


def compute_accuracy_f1(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer."""
    return accuracy_and_f1(np.argmax(eval_prediction.predictions, axis=-1), eval_prediction.label_ids)


def labelled_teacher(teacher_path: str, names: list[str]) -> PreTrainedModel:
    """The checkpoint's trained classifier, refused unless its labels are the data's `names`, in the same order."""
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
    if list(teacher.config.id2label.values()) != names:
        raise ValueError(
            f"The teacher {teacher_path!r} was trained for labels {list(teacher.config.id2label.values())}, "
            f"but the data has {names}. Pass --finetune_teacher to train a new head on this data."
        )
    return teacher


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
    `report.classification_verdict` on them) and cost (`report.model_cost`'s params and MB, and
    `report.measure_speed`'s batch-1 latency, batch-32 throughput and speed-ups over the "teacher", the models timed
    in turns); plus the split's
    `majority_class_rate` and the timing rounds (`speed_rounds`), ready for results.json (the recipe adds the
    `warnings` once all of it is there: `report.health_warnings`). `show_progress` logs the rounds' progress. A model
    is a transformers classifier or a deployed form that is called like one (`nlpkd.export.OnnxClassifier`)."""
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
            **report.model_cost(model),
            **speed[name],
            "num_test_examples": len(references),
        }
    results["majority_class_rate"] = majority_rate
    results["speed_rounds"] = rounds
    return results
