"""Pictures for a student's model card: quality against latency, and the component losses during training.

Figures are drawn with matplotlib's object API (no pyplot), so nothing changes the backend of the caller's session.
"""

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .report import QUALITY_KEYS

QUALITY_VS_LATENCY = "quality_vs_latency.png"
LOSS_CURVES = "loss_curves.png"
AXIS_LABELS = {
    "perplexity": "perplexity (lower is better)",
    "accuracy": "accuracy",
    "f1": "macro F1",
    "bleu": "BLEU",
    "chrf": "chrF",
}


def plot_quality_vs_latency(results: dict, path: str) -> str | None:
    """Each model of `results` (teacher, student(s), baseline: dicts with a quality score such as `accuracy`, `bleu`
    or `perplexity`, and `latency_ms_b1`) as a labelled point, quality against batch-1 latency, with the score's 95 %
    interval (`<score>_ci`) where known. Writes a PNG to `path` and returns it; None when no model has both numbers.
    """
    models = {name: entry for name, entry in results.items() if isinstance(entry, dict) and entry.get("latency_ms_b1")}
    key = next((key for key in QUALITY_KEYS if any(entry.get(key) is not None for entry in models.values())), None)
    if key is None:
        return None
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, entry in models.items():
        if entry.get(key) is None:
            continue
        latency, quality = entry["latency_ms_b1"], entry[key]
        axes.errorbar(latency, quality, yerr=entry.get(f"{key}_ci"), fmt="o", capsize=3, label=name)
        axes.annotate(name, (latency, quality), textcoords="offset points", xytext=(6, 4))
    # From 0, so the distance between the points shows the speed-up; room on the right for the last label.
    axes.set_xlim(0, 1.2 * max(entry["latency_ms_b1"] for entry in models.values()))
    axes.set_xlabel("latency at batch 1 (ms)")
    axes.set_ylabel(AXIS_LABELS.get(key, key))
    axes.set_title(f"{AXIS_LABELS.get(key, key).split(' (')[0]} vs latency")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def plot_loss_curves(log_history: list[dict], path: str) -> str | None:
    """The training loss and each logged component (`hard_loss`, `logit_loss`, `hidden_loss`, `attention_loss`, the
    per-stack terms of seq2seq, ...) per logged step of `log_history` (a Trainer's `state.log_history`). Writes a
    PNG to `path` and returns it; None when no training step was logged."""
    logs = [log for log in log_history if "loss" in log and "step" in log]
    if not logs:
        return None
    names = ["loss", *sorted({key for log in logs for key in log if key.endswith("_loss")})]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name in names:
        points = [(log["step"], log[name]) for log in logs if log.get(name) is not None]
        steps, values = zip(*points, strict=True) if points else ((), ())
        axes.plot(
            steps, values, marker="o" if len(steps) < 20 else None, label="total loss" if name == "loss" else name
        )
    if all(value > 0 for log in logs for name in names if (value := log.get(name)) is not None):
        axes.set_yscale("log")  # the components differ by orders of magnitude
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (mean since the previous log)")
    axes.set_title("distillation losses")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path
