"""P3: the quality-speed frontier on the movie-review task, measured in one run.

Each student shape is distilled from the packaged MiniLM teacher by the text-classification recipe (its default
schedule, no baseline) under several seeds; the teacher is fine-tuned once and shared. The 4-layer students learn
with the default loss set; the 2-layer, 2-head student learns from the logits alone (with the hidden-state and
attention losses it stayed at chance, 49.2 %, while logit-only KD reached 77.3 % on the same seed). Per shape:
test accuracy as mean ± std over the seeds and retention = student / teacher accuracy.

Speed depends on the shape, not the seed, so it is measured once at the end, in this process, after the training
is done: the teacher and the first seed's student of every shape take turns for `--speed_rounds` rounds (batch-1
latency of the median-length test review, batch-32 throughput), and each speed-up is the median over the rounds of
that round's teacher / student ratio. Target: a student at least 5x faster (batch 1) with at least 97 % retention.

    python benchmarks/frontier.py [--seeds 1 2 3] [--students 4L-312H 4L-192H 2L-128H] [--epochs 5]
        [--output_dir outputs/frontier] [--reuse] [--speed_rounds 15] [-- more recipe flags]
"""

import argparse
import json
import os
import statistics

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nlpkd import report
from nlpkd.recipes import text_classification as recipe

# name -> (layers, width, heads, FFN width). Students whose head count is not the teacher's 12 learn the
# head-averaged attention distributions (attention_loss "kl") instead of TinyBERT's per-head score MSE.
SHAPES = {
    "4L-312H": (4, 312, 12, 1200),
    "4L-192H": (4, 192, 12, 768),
    "2L-128H": (2, 128, 2, 512),
}
TEACHER_HEADS = 12

# Loss weights a shape sets beyond the recipe's defaults, passed as recipe flags.
LOSS_WEIGHTS = {
    "2L-128H": {"hidden_weight": 0.0, "attention_weight": 0.0},
}


def recipe_flags(shape: str, seed: int, epochs: float, output_dir: str) -> list[str]:
    layers, width, heads, ffn = SHAPES[shape]
    flags = [
        "--student_num_layers", str(layers),
        "--student_hidden_size", str(width),
        "--student_num_heads", str(heads),
        "--student_intermediate_size", str(ffn),
        "--num_train_epochs", str(epochs),
        "--seed", str(seed),
        "--no_baseline", "true",
        "--output_dir", output_dir,
    ]  # fmt: skip
    weights = LOSS_WEIGHTS.get(shape, {})
    for field, weight in weights.items():
        flags += [f"--{field}", str(weight)]
    if heads != TEACHER_HEADS and weights.get("attention_weight") != 0.0:
        flags += ["--attention_loss", "kl"]
    return flags


def reusable_run(path: str, shape: str) -> dict:
    """A finished run's results, refused when it was distilled with other loss weights than the shape's."""
    with open(path, encoding="utf-8") as file:
        run = json.load(file)
    for field, weight in LOSS_WEIGHTS.get(shape, {}).items():
        used = run["distillation"][field]
        if used != weight:
            raise ValueError(
                f"{path} was distilled with {field}={used}, but the frontier's {shape} uses {field}={weight}. "
                "Move that run aside or choose another --output_dir to reuse nothing from it."
            )
    return run


def summarise(runs: list[dict]) -> dict:
    """Mean ± std over seeds of accuracy and retention."""

    def mean_std(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "params": runs[0]["student"]["params"],
        "accuracy": mean_std([run["student"]["accuracy"] for run in runs]),
        "retention": mean_std([run["student"]["accuracy"] / run["teacher"]["accuracy"] for run in runs]),
        "teacher_accuracy": runs[0]["teacher"]["accuracy"],
    }


def measure_speed(
    teacher_path: str, student_dirs: dict[str, str], texts: list[str], max_length: int, num_rounds: int
) -> tuple[dict[str, dict], list[dict[str, dict]]]:
    """The teacher and each saved student timed in turns on the test `texts` (`nlpkd.report.measure_speed`): per
    model the median latency, throughput and speed-ups over the teacher, and the rounds.

    The teacher gets a fresh two-label head: the head's weights do not change its time.
    """
    typical_text = report.median_length_text(texts)
    models = {"teacher": AutoModelForSequenceClassification.from_pretrained(teacher_path, num_labels=2)}
    models.update(
        {name: AutoModelForSequenceClassification.from_pretrained(path) for name, path in student_dirs.items()}
    )
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    timers = {
        name: report.forward_timer(model, tokenizer, typical_text, texts, max_length) for name, model in models.items()
    }
    return report.measure_speed(timers, num_rounds)


def format_frontier(summaries: dict[str, dict], seeds: list[int]) -> str:
    lines = [
        f"P3 quality-speed frontier, movie reviews, {len(seeds)} seeds {seeds} "
        f"(teacher accuracy {next(iter(summaries.values()))['teacher_accuracy']:.2%}), "
        f"speed on {torch.get_num_threads()} CPU threads",
        f"  {'student':8s} {'params':>7s} {'accuracy':>16s} {'retention':>16s} {'speed-up b1':>12s} {'b32':>7s}",
    ]
    for name, row in summaries.items():
        accuracy, retention = row["accuracy"], row["retention"]
        lines.append(
            f"  {name:8s} {row['params'] / 1e6:6.1f}M {accuracy[0]:8.2%} ± {accuracy[1]:5.2%} "
            f"{retention[0]:8.2%} ± {retention[1]:5.2%} {row['speedup_b1']:11.2f}x {row['speedup_b32']:6.2f}x"
        )
    met = [name for name, row in summaries.items() if row["speedup_b1"] >= 5 and row["retention"][0] >= 0.97]
    verdict = "met by " + ", ".join(met) if met else "not met"
    lines.append(f"  target (>= 5x at batch 1 with >= 97 % retention): {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--students", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--output_dir", default=os.path.join("outputs", "frontier"))
    parser.add_argument(
        "--reuse", action="store_true", help="Take the results.json of runs already in output_dir, not rerun them."
    )
    parser.add_argument("--speed_rounds", type=int, default=15, help="Turns of the teacher and students' timing.")
    options, extra_flags = parser.parse_known_args()
    extra_flags = [flag for flag in extra_flags if flag != "--"]
    runs = {name: [] for name in options.students}
    for name in options.students:
        for seed in options.seeds:
            output_dir = os.path.join(options.output_dir, name, f"seed{seed}")
            done = os.path.join(output_dir, "results.json")
            if options.reuse and os.path.isfile(done):  # a finished run of an interrupted benchmark
                runs[name].append(reusable_run(done, name))
                continue
            runs[name].append(recipe.main(recipe_flags(name, seed, options.epochs, output_dir) + extra_flags))
    # The speed is taken on the runs' teacher, test texts and length limit, which the extra flags may change.
    data_args, teacher_args, *_ = recipe.parse_args(extra_flags)
    texts = recipe.load_data(data_args)["test"]["text"]
    first_seed = {name: os.path.join(options.output_dir, name, f"seed{options.seeds[0]}") for name in runs}
    speed, speed_rounds = measure_speed(
        teacher_args.teacher_path, first_seed, texts, data_args.max_seq_length, options.speed_rounds
    )
    summaries = {name: {**summarise(results), **speed[name]} for name, results in runs.items()}
    with open(os.path.join(options.output_dir, "frontier.json"), "w", encoding="utf-8") as file:
        json.dump({"students": summaries, "speed_rounds": speed_rounds}, file, indent=2)
    print(format_frontier(summaries, options.seeds))
    latencies = {name: [costs[name]["latency_ms_b1"] for costs in speed_rounds] for name in speed_rounds[0]}
    print(
        "  batch-1 latency per round, ms: "
        + "; ".join(f"{name} " + " ".join(f"{ms:.1f}" for ms in values) for name, values in latencies.items())
    )


if __name__ == "__main__":
    main()
