"""What the student-run benchmarks (multi_teacher.py, schedules.py) share: recipe flags after `--`, one student
distilled with the classification recipe's settings and scored on validation and test, one JSON file per run, and
a summary table (mean ± sample std over seeds) of every result file in a folder."""

import dataclasses
import json
import logging
import os
import statistics

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from nlpkd import DistillationTrainer
from nlpkd.classification import compute_accuracy_f1, tokenize
from nlpkd.pipeline import build_student
from nlpkd.recipes.text_classification import load_data

SPLITS = ("validation", "test")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the benchmark's own flags, the recipe's flags after `--`)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def prepared_data(data_args, teacher_args) -> tuple:
    """(data, tokenizer, tokenized data) of the recipe's data arguments, with INFO logging on."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data = load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(teacher_args.teacher_path)
    return data, tokenizer, tokenize(data, tokenizer, data_args.max_seq_length)


def distil(teachers, seed: int, student_args, args, tokenized, tokenizer, output_dir: str, **changes) -> dict:
    """Distil a fresh student (seeded like the recipe's) from `teachers` with `args` and `changes` (argument
    overrides); its last-epoch accuracy and macro F1 on each split."""
    changes = dict(
        seed=seed,
        output_dir=output_dir,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        **changes,
    )
    run_args = dataclasses.replace(args, **changes)
    set_seed(seed)
    collator = DataCollatorWithPadding(tokenizer)
    student = build_student(
        teachers[0], student_args, AutoModelForSequenceClassification, tokenized["train"], collator
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teachers,
        args=run_args,
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_accuracy_f1,
    )
    trainer.train()
    scores = {}
    for split in SPLITS:
        metrics = trainer.evaluate(tokenized[split])
        scores[split], scores[f"{split}_f1"] = metrics["eval_accuracy"], metrics["eval_f1"]
    return scores


def write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)


def read_results(folder: str) -> tuple[dict, dict[str, list[dict]]]:
    """(the `models.json` file's entries, {run: its seeds' result files}) of `folder`."""
    models, runs = {}, {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as file:
            result = json.load(file)
        if name == "models.json":
            models = result
        else:
            runs.setdefault(result["run"], []).append(result)
    return models, runs


def mean_and_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} % ± {spread:.1f}"


def summary(folder: str, keys: tuple[str, ...] = SPLITS) -> str:
    """The table of every result file in `folder`: each key's mean ± sample std over the seeds, per run."""
    models, runs = read_results(folder)
    if not models and not runs:
        return f"No results in {folder} yet."
    lines = [
        f"{model:36s} " + "  ".join(f"{k} {100 * v:.1f} %" for k, v in scores.items())
        for model, scores in models.items()
    ]
    for run, results in sorted(runs.items()):
        cells = [f"{key} {mean_and_spread([100 * result[key] for result in results])}" for key in keys]
        lines.append(f"{f'{run} ({len(results)} seeds)':36s} " + "  ".join(cells))
    return "\n".join(lines)
