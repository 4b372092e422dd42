"""Metric modules shipped in the package, loaded offline by path (`evaluate.load("accuracy")` needs the hub)."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def available_metrics() -> list[str]:
    """Names `load_metric` accepts: the folders here holding a module of their own name."""
    return sorted(path.parent.name for path in METRICS_DIR.glob("*/*.py") if path.stem == path.parent.name)


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The shipped metric `name` (e.g. "accuracy", "f1") as an `evaluate` module."""
    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}: nlpkd ships {', '.join(available_metrics())}.")
    return evaluate.load(str(METRICS_DIR / name))
