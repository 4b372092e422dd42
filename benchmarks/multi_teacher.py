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
import os
import sys

import numpy as np
import torch
from student_runs import SPLITS, distil, prepared_data, split_argv, summary, write_json
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from nlpkd.recipes.text_classification import parse_args, prepare_teacher


def main(argv: list[str]) -> None:
    own, recipe_argv = split_argv(argv)
    options = benchmark_options(own)
    data_args, teacher_args, student_args, *_, args = parse_args(recipe_argv)
    folder = os.path.join(args.output_dir, "multi_teacher")
    if options.summarise_only:
        print(summary(folder))
        return
    data, tokenizer, tokenized = prepared_data(data_args, teacher_args)
    teachers = []
    for seed in options.teacher_seeds:
        teacher_args.teacher_seed = seed
        teachers.append(prepare_teacher(teacher_args, data, tokenized, tokenizer, args, data_args.max_seq_length))
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "models.json"), teacher_accuracies(teachers, tokenized, tokenizer, options))
    for run in options.runs:
        chosen = [teachers[int(index)] for index in run.split("+")]
        for seed in options.seeds:
            scores = distil(chosen, seed, student_args, args, tokenized, tokenizer, os.path.join(folder, run))
            name = f"student of teacher(s) {run}"
            write_json(os.path.join(folder, f"{run}-seed{seed}.json"), {"run": name, "seed": seed, **scores})
    print(summary(folder))


def benchmark_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher_seeds", type=int, nargs=2, default=[1, 2], help="Fine-tuning seeds of the two teachers."
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
        ensemble = float((sum(probs).argmax(-1) == labels).mean())
        results.setdefault("ensemble (mean probabilities)", {})[split] = ensemble
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
