"""P3: the quality-speed frontier on the movie-review task and what each lever adds, measured in one run.

Each student shape is distilled from the packaged MiniLM teacher by the text-classification recipe with each lever,
under several seeds; the teacher is fine-tuned once and shared. The levers (recipe flags on top of its defaults):

  random   every loss (TinyBERT's), from a random start: the recipe before it started from the teacher
  pruned   every loss, from the teacher's most important slices (the recipe's default start); these runs also train
           the no-KD baseline from the same pruned start, the "no KD" row
  logits   pruned start, the hard and logit losses only
  anneal   pruned start, the logit-KD temperature annealed linearly from T = 2 to 1
  aug4     pruned start, TinyBERT augmentation with 4 variants per training text, 2 epochs (5x the rows: twice the
           default's steps)

Per (shape, lever): test accuracy and macro F1 as mean ± std over the seeds, retention = student / teacher accuracy,
and the student's training time (the Trainer's own clock, mean over the seeds).

Speed depends on the shape, not the lever or seed, so it is measured once at the end, in this process, after the
training is done: the teacher and one student of every shape take turns for `--speed_rounds` rounds (batch-1 latency
of the median-length test review, batch-32 throughput), and each speed-up is the median over the rounds of that
round's teacher / student ratio. Targets: a student at least 5x faster (batch 1) keeping at least 96 %, and the
TinyBERT4 shape (4L-312H) keeping at least 97 %. The table goes to frontier.json and frontier.md, the picture of
accuracy against speed-up to frontier.png, in --output_dir.

    python benchmarks/frontier.py [--seeds 1 2 3] [--students 4L-312H 3L-192H] [--levers pruned aug4]
        [--epochs 5] [--output_dir outputs/frontier] [--reuse] [--speed_rounds 15] [-- more recipe flags]
"""

import argparse
import json
import os
import statistics

import torch
from matplotlib.figure import Figure
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nlpkd import report
from nlpkd.recipes import text_classification as recipe

# name -> (layers, width, heads, FFN width). Heads keep the teacher's width (32) so that pruning keeps whole heads;
# students whose head count is not the teacher's 12 learn the head-averaged attention distributions (attention_loss
# "kl") instead of TinyBERT's per-head score MSE.
SHAPES = {
    "4L-312H": (4, 312, 12, 1200),
    "4L-192H": (4, 192, 6, 768),
    "3L-192H": (3, 192, 6, 768),
    "2L-256H": (2, 256, 8, 1024),
    "2L-128H": (2, 128, 4, 512),
}
TEACHER_HEADS = 12

# lever -> (recipe flags, what its results.json must show to be reused: {(section, key): value}).
LEVERS = {
    "random": (["--student_init", "random", "--no_baseline", "true"], {("student_init",): "random"}),
    "pruned": (["--student_init", "pruned"], {("student_init",): "pruned", ("augmentation",): None}),
    "logits": (
        ["--student_init", "pruned", "--hidden_weight", "0", "--attention_weight", "0", "--no_baseline", "true"],
        {("distillation", "hidden_weight"): 0.0, ("distillation", "attention_weight"): 0.0},
    ),
    "anneal": (
        ["--student_init", "pruned", "--temperature_schedule", "linear", "--final_temperature", "1",
         "--no_baseline", "true"],
        {("distillation", "temperature_schedule"): "linear"},
    ),
    "aug4": (
        ["--student_init", "pruned", "--augment_copies", "4", "--num_train_epochs", "2", "--no_baseline", "true"],
        {("augmentation", "copies"): 4},
    ),
}  # fmt: skip
BASELINE = "no KD"  # the row of the pruned runs' baselines
TARGETS = "a student >= 5x faster at batch 1 keeping >= 96 %; 4L-312H keeping >= 97 %"


def recipe_flags(shape: str, lever: str, seed: int, epochs: float, output_dir: str) -> list[str]:
    layers, width, heads, ffn = SHAPES[shape]
    flags = [
        "--student_num_layers", str(layers),
        "--student_hidden_size", str(width),
        "--student_num_heads", str(heads),
        "--student_intermediate_size", str(ffn),
        "--num_train_epochs", str(epochs),
        "--seed", str(seed),
        "--output_dir", output_dir,
    ]  # fmt: skip
    if heads != TEACHER_HEADS:
        flags += ["--attention_loss", "kl"]
    return flags + LEVERS[lever][0]  # a lever's own epochs come last and win


def reusable_run(path: str, lever: str) -> dict:
    """A finished run's results, refused when they show other settings than the lever's."""
    with open(path, encoding="utf-8") as file:
        run = json.load(file)
    for keys, expected in LEVERS[lever][1].items():
        value = run
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if keys == ("student_init",) and value is None:
            continue  # written before results.json named the start
        if value != expected:
            raise ValueError(
                f"{path} has {'.'.join(keys)}={value!r}, but the frontier's {lever!r} lever needs {expected!r}. Move "
                "that run aside or choose another --output_dir to reuse nothing from it."
            )
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict], model: str = "student") -> dict:
    """Mean ± std over seeds of `model`'s accuracy, macro F1 and retention, and its mean training time."""
    times = [run["train_runtime_s"][model] for run in runs if run.get("train_runtime_s", {}).get(model)]
    return {
        "params": runs[0][model]["params"],
        "seeds": len(runs),
        "accuracy": mean_std([run[model]["accuracy"] for run in runs]),
        "f1": mean_std([run[model]["f1"] for run in runs]) if all("f1" in run[model] for run in runs) else None,
        "retention": mean_std([run[model]["accuracy"] / run["teacher"]["accuracy"] for run in runs]),
        "teacher_accuracy": runs[0]["teacher"]["accuracy"],
        "train_runtime_s": statistics.mean(times) if times else None,
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


def verdicts(rows: dict[tuple[str, str], dict]) -> list[str]:
    """Whether each target is met, and by which rows (or by how much it is missed)."""
    students = {key: row for key, row in rows.items() if key[1] != BASELINE}
    fast = {key: row for key, row in students.items() if row["speedup_b1"] >= 5}
    met = [key for key, row in fast.items() if row["retention"][0] >= 0.96]
    lines = []
    if met:
        lines.append("target >= 5x at >= 96 %: met by " + ", ".join(f"{shape} {lever}" for shape, lever in met))
    elif fast:
        best = max(fast, key=lambda key: fast[key]["retention"][0])
        lines.append(
            f"target >= 5x at >= 96 %: not met; best >= 5x: {best[0]} {best[1]} at {fast[best]['retention'][0]:.1%}"
        )
    else:
        lines.append("target >= 5x at >= 96 %: no student measured >= 5x")
    tiny = {key: row for key, row in students.items() if key[0] == "4L-312H"}
    if tiny:
        best = max(tiny, key=lambda key: tiny[key]["retention"][0])
        verdict = "met" if tiny[best]["retention"][0] >= 0.97 else "not met"
        lines.append(f"target 4L-312H >= 97 %: {verdict} (best: {best[1]} at {tiny[best]['retention'][0]:.1%})")
    return lines


def format_frontier(rows: dict[tuple[str, str], dict], seeds: list[int]) -> str:
    """The ablation table in markdown, with the targets' verdicts under it."""
    teacher = next(iter(rows.values()))["teacher_accuracy"]
    lines = [
        f"Quality-speed frontier, movie reviews, seeds {seeds}, teacher accuracy {teacher:.2%}, speed on "
        f"{torch.get_num_threads()} CPU threads",
        "",
        "| student | lever | params | accuracy | macro F1 | retention | speed-up b1 | b32 | training time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (shape, lever), row in rows.items():
        accuracy, retention, f1 = row["accuracy"], row["retention"], row["f1"]
        f1_cell = f"{f1[0]:.2%} ± {f1[1]:.2%}" if f1 else "—"
        time_cell = f"{row['train_runtime_s']:.0f} s" if row["train_runtime_s"] else "—"
        lines.append(
            f"| {shape} | {lever} | {row['params'] / 1e6:.1f} M | {accuracy[0]:.2%} ± {accuracy[1]:.2%} | {f1_cell} "
            f"| {retention[0]:.1%} ± {retention[1]:.1%} | {row['speedup_b1']:.1f}x | {row['speedup_b32']:.1f}x "
            f"| {time_cell} |"
        )
    return "\n".join([*lines, "", *verdicts(rows)])


def plot_frontier(rows: dict[tuple[str, str], dict], path: str) -> str:
    """Accuracy (mean ± std over seeds) against batch-1 speed-up: one point per shape and lever, the no-KD baselines
    hollow, the teacher at 1x with a dashed line at its accuracy."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    teacher = next(iter(rows.values()))["teacher_accuracy"]
    axes.axhline(teacher, linestyle="--", color="grey", linewidth=1)
    axes.plot([1.0], [teacher], marker="*", markersize=12, color="black", linestyle="", label="teacher")
    levers = list(dict.fromkeys(lever for _, lever in rows))
    colours = {lever: f"C{index}" for index, lever in enumerate(levers)}
    for lever in levers:
        points = [(shape, row) for (shape, name), row in rows.items() if name == lever]
        hollow = lever == BASELINE
        axes.errorbar(
            [row["speedup_b1"] for _, row in points],
            [row["accuracy"][0] for _, row in points],
            yerr=[row["accuracy"][1] for _, row in points],
            fmt="o",
            capsize=3,
            color=colours[lever],
            markerfacecolor="none" if hollow else colours[lever],
            label=lever,
        )
        for shape, row in points:
            axes.annotate(
                shape, (row["speedup_b1"], row["accuracy"][0]), textcoords="offset points", xytext=(5, 3), fontsize=7
            )
    axes.set_xlabel("speed-up over the teacher, batch 1")
    axes.set_ylabel("test accuracy")
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--students", nargs="+", choices=list(SHAPES), default=["4L-312H", "3L-192H"])
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--output_dir", default=os.path.join("outputs", "frontier"))
    parser.add_argument(
        "--reuse", action="store_true", help="Take the results.json of runs already in output_dir, not rerun them."
    )
    parser.add_argument("--speed_rounds", type=int, default=15, help="Turns of the teacher and students' timing.")
    options, extra_flags = parser.parse_known_args()
    extra_flags = [flag for flag in extra_flags if flag != "--"]
    runs, speed_dirs = {}, {}
    for shape in options.students:
        for lever in options.levers:
            for seed in options.seeds:
                output_dir = os.path.join(options.output_dir, shape, lever, f"seed{seed}")
                done = os.path.join(output_dir, "results.json")
                if options.reuse and os.path.isfile(done):  # a finished run of an interrupted benchmark
                    run = reusable_run(done, lever)
                else:
                    run = recipe.main(recipe_flags(shape, lever, seed, options.epochs, output_dir) + extra_flags)
                runs.setdefault((shape, lever), []).append(run)
                speed_dirs.setdefault(shape, output_dir)
    # The speed is taken on the runs' teacher, test texts and length limit, which the extra flags may change.
    data_args, teacher_args, *_ = recipe.parse_args(extra_flags)
    texts = recipe.load_data(data_args)["test"]["text"]
    speed, speed_rounds = measure_speed(
        teacher_args.teacher_path, speed_dirs, texts, data_args.max_seq_length, options.speed_rounds
    )
    rows = {}
    for (shape, lever), results in runs.items():
        rows[shape, lever] = {**summarise(results), **speed[shape]}
        if all("baseline" in run for run in results):
            rows[shape, BASELINE] = {**summarise(results, "baseline"), **speed[shape]}
    table = format_frontier(rows, options.seeds)
    with open(os.path.join(options.output_dir, "frontier.json"), "w", encoding="utf-8") as file:
        rows_json = [{"student": shape, "lever": lever, **row} for (shape, lever), row in rows.items()]
        json.dump({"rows": rows_json, "speed_rounds": speed_rounds}, file, indent=2)
    with open(os.path.join(options.output_dir, "frontier.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    plot_frontier(rows, os.path.join(options.output_dir, "frontier.png"))
    print(table)
    latencies = {name: [costs[name]["latency_ms_b1"] for costs in speed_rounds] for name in speed_rounds[0]}
    print(
        "batch-1 latency per round, ms: "
        + "; ".join(f"{name} " + " ".join(f"{ms:.1f}" for ms in values) for name, values in latencies.items())
    )


if __name__ == "__main__":
    main()
