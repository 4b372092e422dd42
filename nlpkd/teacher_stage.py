"""Stage 1 of every recipe: a teacher trained for the task, used as it is or trained once and kept for reuse."""

import logging
import os
from collections.abc import Callable
from typing import TypeVar

from transformers import AutoConfig, PreTrainedModel, Trainer, TrainingArguments

from .checkpoints import last_complete_checkpoint, save_whole
from .fingerprint import fingerprint
from .pipeline import plain_training_args
from .recipe_args import TeacherArguments

logger = logging.getLogger(__name__)

Teacher = TypeVar("Teacher")


def trained_teacher(
    teacher_path: str,
    heads: tuple[str, ...] | None,
    load: Callable[[str], Teacher],
    finetune: Callable[[], Teacher],
    retrain: bool = False,
) -> Teacher:
    """The recipe's teacher: `load(teacher_path)` when the checkpoint already does the task, else `finetune()`.

    A checkpoint does the task when it was saved from a model with one of the task's `heads` (architecture name
    endings, e.g. `ForSequenceClassification`); with `heads=None` the task needs no head (general distillation of a
    bare body) and every checkpoint does. `retrain` (the recipes' --finetune_teacher) trains even a checkpoint that
    has the head. The task-specific parts are the recipe's: `load` also vets the checkpoint against the data (e.g.
    its labels), and `finetune` trains through `finetune_teacher_once`, so that the next run loads its result.
    """
    if heads is None or (not retrain and has_trained_head(teacher_path, heads)):
        return load(teacher_path)
    return finetune()


def has_trained_head(model_name_or_path: str, heads: tuple[str, ...]) -> bool:
    """Whether the checkpoint was saved from a model with one of these task heads (architecture name endings)."""
    architectures = AutoConfig.from_pretrained(model_name_or_path).architectures or []
    return any(name.endswith(heads) for name in architectures)


def finetune_teacher_once(
    auto_class,
    teacher_path: str,
    cache_key: tuple,
    teacher_args: TeacherArguments,
    args: TrainingArguments,
    train_dataset,
    data_collator,
    tokenizer,
    build=None,
    training_changes: dict | None = None,
    load=None,
    **model_kwargs,
) -> PreTrainedModel:
    """Fine-tune `teacher_path` as `auto_class` on `train_dataset`, once: the result is kept under
    `teacher_cache_dir/<name>-<hash of cache_key and the teacher settings>` and loaded from there by later runs.

    `build()`, when given, makes the model to train instead of `auto_class.from_pretrained(teacher_path)` (e.g. a
    teacher from scratch); `training_changes` are teacher-only training arguments (e.g. label smoothing); `load(path)`,
    when given, loads the kept teacher instead of `auto_class.from_pretrained(path)`.
    """
    training_changes = training_changes or {}
    settings = (
        teacher_path,
        *cache_key,
        teacher_args.teacher_num_train_epochs,
        teacher_args.teacher_learning_rate,
        args.per_device_train_batch_size,
        teacher_args.teacher_seed,
        *([training_changes] if training_changes else []),
    )
    name = os.path.basename(teacher_path.rstrip("/"))
    cache_dir = os.path.join(teacher_args.teacher_cache_dir, f"{name}-{fingerprint(*settings)}")
    if os.path.isfile(os.path.join(cache_dir, "config.json")):
        logger.info("Loading the fine-tuned teacher from %s", cache_dir)
        return (load or auto_class.from_pretrained)(cache_dir)
    logger.info("Fine-tuning the teacher %s; it will be kept in %s", teacher_path, cache_dir)
    teacher = build() if build is not None else auto_class.from_pretrained(teacher_path, **model_kwargs)
    trainer = Trainer(
        model=teacher,
        args=plain_training_args(
            args,
            output_dir=os.path.join(cache_dir, "run"),
            num_train_epochs=teacher_args.teacher_num_train_epochs,
            learning_rate=teacher_args.teacher_learning_rate,
            max_steps=-1 if args.max_steps <= 0 else args.max_steps,
            seed=teacher_args.teacher_seed,
            **{"save_strategy": "no", **training_changes},
            eval_strategy="no",
            load_best_model_at_end=False,
            push_to_hub=False,
        ),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    # A run cut short (with save_strategy in training_changes) goes on from its last complete checkpoint.
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(trainer.args.output_dir))
    save_whole(trainer.save_model, cache_dir)  # config.json, what the check above looks for, comes last
    teacher.name_or_path = teacher.config.name_or_path = cache_dir  # as when a later run loads it from there
    return teacher.eval()
