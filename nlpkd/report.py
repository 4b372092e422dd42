"""Measurements for teacher-vs-student-vs-baseline tables: quality, size, latency, speed-up."""

import math
import statistics
import time

import torch

# (results key, column header, scale, decimals)
COLUMNS = (
    ("perplexity", "perplexity", 1, 2),
    ("accuracy", "accuracy %", 100, 1),
    ("f1", "f1 %", 100, 1),
    ("bleu", "BLEU", 1, 1),
    ("chrf", "chrF", 1, 1),
    ("params", "params M", 1e-6, 2),
    ("size_mb", "size MB", 1, 1),
    ("latency_ms_b1", "latency b1 ms", 1, 1),
    ("throughput_b32", "throughput b32 /s", 1, 1),
)
QUALITY_KEYS = ("perplexity", "accuracy", "f1", "bleu", "chrf")
RETAINED_KEYS = ("accuracy", "bleu")  # higher-is-better scores whose teacher share is worth a line


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters, tied ones counted once."""
    return sum(parameter.numel() for parameter in model.parameters())


def model_size_mb(model: torch.nn.Module) -> float:
    """Megabytes (1e6 bytes) of the weights `save_pretrained` writes: parameters and persistent buffers, tied once."""
    bytes_by_storage = {tensor.data_ptr(): tensor.nbytes for tensor in model.state_dict().values()}
    return sum(bytes_by_storage.values()) / 1e6


def measure_latency(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int = 128,
    warmup: int = 2,
    repeats: int = 5,
) -> float:
    """Median milliseconds of one forward pass over `batch_size` texts (cycling through `texts`).

    The batch is tokenised once, untimed, padded to its longest text (at most `max_length` tokens) and run on the
    model's device in eval mode under `torch.inference_mode()`; the model's train/eval mode is restored afterwards.
    CPU threads are whatever the caller set (`torch.set_num_threads`).
    """
    if not texts:
        raise ValueError("texts is empty: give at least one text to time.")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"Need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, {warmup}.")
    device = next(model.parameters()).device
    batch = [texts[index % len(texts)] for index in range(batch_size)]
    inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    return _median_ms(model, lambda: model(**inputs), warmup, repeats)


def throughput(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    batch_size: int = 32,
    max_length: int = 128,
    warmup: int = 2,
    repeats: int = 5,
) -> float:
    """Examples per second at `batch_size`, from `measure_latency`."""
    return batch_size * 1000 / measure_latency(model, tokenizer, texts, batch_size, max_length, warmup, repeats)


def median_length_text(texts: list[str]) -> str:
    """The text of median length (in characters): the input the batch-1 latencies are timed on."""
    return sorted(texts, key=len)[len(texts) // 2]


def inference_cost(model: torch.nn.Module, tokenizer, typical_text: str, texts: list[str], max_length: int) -> dict:
    """Parameters, weight megabytes, batch-1 latency on `typical_text` and batch-32 throughput over `texts`."""
    return {
        "params": count_parameters(model),
        "size_mb": model_size_mb(model),
        "latency_ms_b1": measure_latency(model, tokenizer, [typical_text], 1, max_length, warmup=3, repeats=30),
        "throughput_b32": throughput(model, tokenizer, texts, 32, max_length, repeats=10),
    }


def generation_latency(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    warmup: int = 2,
    repeats: int = 10,
    max_length: int = 128,
    **generate_kwargs,
) -> float:
    """Median milliseconds to translate (generate from) one `text` at batch 1, in eval mode, with `generate_kwargs`
    (e.g. num_beams); the model's train/eval mode is restored afterwards."""
    device = next(model.parameters()).device
    inputs = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt").to(device)
    inputs.pop("token_type_ids", None)
    return _median_ms(model, lambda: model.generate(**inputs, **generate_kwargs), warmup, repeats)


def _median_ms(model: torch.nn.Module, run, warmup: int, repeats: int) -> float:
    """Median milliseconds of `run()` over `repeats` timed calls after `warmup` untimed ones, with `model` in eval
    mode under `torch.inference_mode()` (its train/eval mode restored afterwards)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seconds = []
    try:
        with torch.inference_mode():
            for step in range(warmup + repeats):
                _synchronize(device)
                start = time.perf_counter()
                run()
                _synchronize(device)
                if step >= warmup:
                    seconds.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * statistics.median(seconds)


def accuracy_confidence_interval(accuracy: float, n: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation confidence interval (95 % for z=1.96) of an accuracy on n examples."""
    if not 0 <= accuracy <= 1 or n < 1:
        raise ValueError(f"Need 0 <= accuracy <= 1 and n >= 1; got accuracy={accuracy}, n={n}.")
    return z * math.sqrt(accuracy * (1 - accuracy) / n)


def format_results_table(results: dict) -> str:
    """A plain-text table of `results` plus retention and speed-up lines against the teacher.

    `results` maps each model (e.g. "teacher", "student", "baseline") to a dict with any of `accuracy`, `f1`
    (fractions), `accuracy_ci` (half-width, a fraction), `params`, `size_mb`, `latency_ms_b1`, `throughput_b32`;
    entries that are not dicts (such as "retention") are skipped and missing values show as "-".
    """
    models = _models(results)
    columns = _columns(models)
    rows = [["model", *(header for _, header, _, _ in columns)]]
    for name, entry in models.items():
        rows.append([name, *(_format_cell(entry, key, scale, decimals) for key, _, scale, decimals in columns)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    teacher = models.get("teacher", {})
    others = {name: entry for name, entry in models.items() if name != "teacher"}
    key = _retained_key(teacher)
    retention = [
        f"{name} {value:.1%}"
        for name, entry in others.items()
        if (value := _retention(entry, teacher, key)) is not None
    ]
    speedup = [f"{name} {value:.1f}×" for name, entry in others.items() if (value := _speedup(entry, teacher))]
    if retention:
        lines.append(f"retention of teacher {key}: " + ", ".join(retention))
    if speedup:
        lines.append("speed-up over teacher at batch 1: " + ", ".join(speedup))
    return "\n".join(lines)


def markdown_results_table(results: dict) -> str:
    """`format_results_table` as a Markdown table, with speed-up and retention against the teacher as columns (the
    retention column only for scores that have one: accuracy, BLEU)."""
    models = _models(results)
    columns = _columns(models)
    teacher = models.get("teacher", {})
    key = _retained_key(teacher)
    retained = any(_retention(entry, teacher, key) is not None for entry in models.values())
    headers = ["model", *(header for _, header, _, _ in columns), "speed-up b1"]
    headers += [f"retention of teacher {key}"] if retained else []
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, entry in models.items():
        cells = [_format_cell(entry, column, scale, decimals) for column, _, scale, decimals in columns]
        speedup, retention = _speedup(entry, teacher), _retention(entry, teacher, key)
        cells.append(f"{speedup:.1f}×" if speedup else "-")
        if retained:
            cells.append(f"{retention:.1%}" if retention is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _models(results: dict) -> dict[str, dict]:
    """The entries of `results` that are measured models: dicts with some column of the table (not, say, the
    distillation settings or a search)."""
    return {
        name: entry
        for name, entry in results.items()
        if isinstance(entry, dict) and any(column[0] in entry for column in COLUMNS)
    }


def _columns(models: dict[str, dict]) -> list[tuple]:
    # Quality columns appear when some model has them (accuracy for classifiers, perplexity for LMs).
    return [c for c in COLUMNS if c[0] not in QUALITY_KEYS or any(c[0] in entry for entry in models.values())]


def _retained_key(teacher: dict) -> str:
    return next((key for key in RETAINED_KEYS if teacher.get(key)), "accuracy")


def _retention(entry: dict, teacher: dict, key: str) -> float | None:
    if entry.get(key) is None or not teacher.get(key):
        return None
    return entry[key] / teacher[key]


def _speedup(entry: dict, teacher: dict) -> float | None:
    if not entry.get("latency_ms_b1") or not teacher.get("latency_ms_b1"):
        return None
    return teacher["latency_ms_b1"] / entry["latency_ms_b1"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)


def _format_cell(entry: dict, key: str, scale: float, decimals: int) -> str:
    value = entry.get(key)
    if value is None:
        return "-"
    cell = f"{value * scale:.{decimals}f}"
    if entry.get(f"{key}_ci") is not None:
        cell += f" ± {entry[f'{key}_ci'] * scale:.{decimals}f}"
    return cell
