"""Multi-teacher distillation on the classification recipe's data: is a student of two teachers better than a student
of either one?

Two teachers are the recipe's stage-1 teacher fine-tuned with two seeds (`--teacher_seeds`, kept and reused like the
recipe's). Each run distils a student, with the recipe's settings (its defaults, or the flags given after the
benchmark's own), from one teacher (`0`, `1`) or from both (`0+1`, equal weights), for each `--seeds`, and writes
`<output_dir>/multi_teacher/<run>-seed<seed>.json` with the student's validation and test accuracy; the summary (mean
± sample std over the seeds per run, the teachers' accuracies and their ensemble's, i.e. their averaged
probabilities) is printed from every result file in that folder, so runs launched as separate processes are
summarised together.

    python benchmarks/multi_teacher.py --runs 0 1 0+1 --seeds 42 43 44      # everything, one run after another
    python benchmarks/multi_teacher.py --runs 0+1 --seeds 42 -- --bf16 true  # recipe flags after `--`
    python benchmarks/multi_teacher.py --runs                                # the two teachers alone (kept for reuse)
    python benchmarks/multi_teacher.py --summarise_only                      # the table of what has been written
"""

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from nlpkd import DistillationTrainer
from nlpkd.classification import compute_accuracy_f1, tokenize
from nlpkd.pipeline import build_student
from nlpkd.recipes.text_classification import load_data, parse_args, prepare_teacher

SPLITS = ("validation", "test")


def main(argv: list[str]) -> None:
    own, recipe_argv = split_argv(argv)
    options = benchmark_options(own)
    data_args, teacher_args, student_args, _, args = parse_args(recipe_argv)
    folder = os.path.join(args.output_dir, "multi_teacher")
    if options.summarise_only:
        print(summary(folder))
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data = load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(teacher_args.teacher_path)
    tokenized = tokenize(data, tokenizer, data_args.max_seq_length)
    teachers = []
    for seed in options.teacher_seeds:
        teacher_args.teacher_seed = seed
        teachers.append(prepare_teacher(teacher_args, data, tokenized, tokenizer, args, data_args.max_seq_length))
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "teachers.json"), teacher_accuracies(teachers, tokenized, tokenizer, options))
    for run in options.runs:
        chosen = [teachers[int(index)] for index in run.split("+")]
        for seed in options.seeds:
            accuracy = distil(chosen, seed, student_args, args, tokenized, tokenizer, os.path.join(folder, run))
            write_json(os.path.join(folder, f"{run}-seed{seed}.json"), {"run": run, "seed": seed, **accuracy})
    print(summary(folder))


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def benchmark_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher_seeds", type=int, nargs=2, default=[1, 2], help="Fine-tuning seeds of the teachers."
    )
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["0", "1", "0+1"],
        help="Teachers of each run: 0, 1 or 0+1 (none: the teachers only).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="Student seeds of each run.")
    parser.add_argument("--summarise_only", action="store_true", help="Print the table of the results written.")
    options = parser.parse_args(argv)
    for run in options.runs:
        if not all(index in ("0", "1") for index in run.split("+")):
            parser.error(f"--runs takes 0, 1 or 0+1, got {run!r}.")
    return options


def distil(teachers, seed: int, student_args, args, tokenized, tokenizer, output_dir: str) -> dict[str, float]:
    """Distil a fresh student (seeded like the recipe's) from `teachers`; its validation and test accuracy."""
    # The last epoch's student, as the recipe reports it; no checkpoints.
    changes = dict(
        seed=seed, output_dir=output_dir, save_strategy="no", eval_strategy="no", load_best_model_at_end=False
    )
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    run_args = type(args)(**{**values, **changes})
    set_seed(seed)
    student = build_student(teachers[0], student_args, AutoModelForSequenceClassification)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teachers if len(teachers) > 1 else teachers[0],
        args=run_args,
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_accuracy_f1,
    )
    trainer.train()
    return {split: trainer.evaluate(tokenized[split])["eval_accuracy"] for split in SPLITS}


@torch.no_grad()
def probabilities(model, dataset, tokenizer, batch_size: int) -> np.ndarray:
    model.eval()
    features = dataset.remove_columns("label")
    loader = DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    return np.concatenate([model(**batch.to(device)).logits.float().softmax(-1).cpu().numpy() for batch in loader])


def teacher_accuracies(teachers, tokenized, tokenizer, options) -> dict:
    results = {}
    for split in SPLITS:
        labels = np.array(tokenized[split]["label"])
        probs = [probabilities(teacher, tokenized[split], tokenizer, 64) for teacher in teachers]
        for seed, p in zip(options.teacher_seeds, probs, strict=True):
            results.setdefault(f"teacher seed {seed}", {})[split] = float((p.argmax(-1) == labels).mean())
        results.setdefault("ensemble (mean probabilities)", {})[split] = float(
            (sum(probs).argmax(-1) == labels).mean()
        )
    return results


def summary(folder: str) -> str:
    """The table of every result file in `folder`: accuracy mean ± sample std over seeds, per run and split."""
    if not os.path.isdir(folder):
        return f"No results in {folder} yet."
    runs: dict[str, list[dict]] = {}
    lines = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as file:
            result = json.load(file)
        if name == "teachers.json":
            for model, accuracy in result.items():
                lines.append(f"{model:36s} " + "  ".join(f"{split} {100 * accuracy[split]:.1f} %" for split in SPLITS))
        else:
            runs.setdefault(result["run"], []).append(result)
    for run, results in sorted(runs.items()):
        cells = []
        for split in SPLITS:
            values = [100 * result[split] for result in results]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{split} {statistics.mean(values):.1f} % ± {spread:.1f}")
        label = f"student of teacher(s) {run} ({len(results)} seeds)"
        lines.append(f"{label:36s} " + "  ".join(cells))
    return "\n".join(lines)


def write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
