"""Text-classification stages: tokenise, get a fine-tuned teacher, evaluate teacher/student/baseline."""

import logging
import os

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from . import report
from .metrics import load_metric
from .pipeline import fingerprint, has_trained_head, plain_training_args
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
    settings = (
        teacher_path,
        data_digest(data),
        teacher_args.teacher_num_train_epochs,
        teacher_args.teacher_learning_rate,
        args.per_device_train_batch_size,
        max_seq_length,
        args.seed,
    )
    cache_dir = os.path.join(
        teacher_args.teacher_cache_dir, f"{os.path.basename(teacher_path.rstrip('/'))}-{fingerprint(*settings)}"
    )
    if os.path.isfile(os.path.join(cache_dir, "config.json")):
        logger.info("Loading the fine-tuned teacher from %s", cache_dir)
        return AutoModelForSequenceClassification.from_pretrained(cache_dir)
    logger.info("Fine-tuning the teacher %s; it will be kept in %s", teacher_path, cache_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path, ignore_mismatched_sizes=True, **labels)
    trainer = Trainer(
        model=teacher,
        args=plain_training_args(
            args,
            output_dir=os.path.join(cache_dir, "run"),
            num_train_epochs=teacher_args.teacher_num_train_epochs,
            learning_rate=teacher_args.teacher_learning_rate,
            max_steps=-1 if args.max_steps <= 0 else args.max_steps,
            save_strategy="no",
            eval_strategy="no",
            load_best_model_at_end=False,
            push_to_hub=False,
        ),
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    trainer.save_model(cache_dir)
    return teacher


@torch.inference_mode()
def predict_labels(model: PreTrainedModel, dataset, tokenizer, batch_size: int = 64) -> np.ndarray:
    model.eval()
    features = dataset.remove_columns("label") if "label" in dataset.column_names else dataset
    loader = DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    predictions = [model(**batch.to(model.device)).logits.argmax(-1).cpu().numpy() for batch in loader]
    return np.concatenate(predictions)


def evaluate_classifier(model: PreTrainedModel, tokenizer, tokenized_test, test_texts: list[str], max_length: int):
    """Quality (accuracy with its 95 % interval, macro F1) and cost (params, MB, latency) on the test split."""
    predictions = predict_labels(model, tokenized_test, tokenizer)
    references = np.array(tokenized_test["label"])
    quality = accuracy_and_f1(predictions, references)
    typical_text = sorted(test_texts, key=len)[len(test_texts) // 2]
    return {
        **quality,
        "accuracy_ci": report.accuracy_confidence_interval(quality["accuracy"], len(references)),
        "params": report.count_parameters(model),
        "size_mb": report.model_size_mb(model),
        "latency_ms_b1": report.measure_latency(model, tokenizer, [typical_text], 1, max_length, warmup=3, repeats=30),
        "throughput_b32": report.throughput(model, tokenizer, test_texts, 32, max_length, repeats=10),
        "num_test_examples": len(references),
    }
