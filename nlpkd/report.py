"""Measurements for teacher-vs-student-vs-baseline tables: quality, size, latency, speed-up, and the verdicts on
results no better than guessing."""

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from .progress import Progress

# (results key, column header, scale, decimals)
COLUMNS = (
    ("decoding", "decoding", None, None),  # text: how a translation model generated (greedy, beam 4)
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
OPTIONAL_KEYS = ("decoding", *QUALITY_KEYS)  # columns shown only when some model has them
RETAINED_KEYS = ("accuracy", "bleu")  # higher-is-better scores whose teacher share is worth a line
# speed-up key -> (the timing it is a ratio of, whether a smaller timing is the faster one)
SPEEDUPS = {"speedup_b1": ("latency_ms_b1", True), "speedup_b32": ("throughput_b32", False)}
# Rounds of interleaved timing: enough that a few rounds disturbed by another job do not move the median.
SPEED_ROUNDS = 10
# "Macro-F1 far below accuracy": a model predicting only the majority class of a 2-class split with majority rate
# p scores accuracy p and macro-F1 p / (1 + p), 17 points below at p = 0.5 and more the larger p is; a model that
# gets every class about equally right has macro-F1 close to its accuracy.
F1_GAP = 0.15
VERDICTS = ("ok", "majority_class", "low_macro_f1")


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters, tied ones counted once."""
    return sum(parameter.numel() for parameter in model.parameters())


def model_size_mb(model: torch.nn.Module) -> float:
    """Megabytes (1e6 bytes) of the weights `save_pretrained` writes: parameters and persistent buffers, tied once."""
    bytes_by_storage = {tensor.data_ptr(): tensor.nbytes for tensor in model.state_dict().values()}
    return sum(bytes_by_storage.values()) / 1e6


def model_cost(model: torch.nn.Module) -> dict[str, float | None]:
    """`params` (`count_parameters`) and `size_mb` (`model_size_mb`) of `model`, or those it reports itself through a
    `cost()` method: a deployed form run outside torch (`nlpkd.export.OnnxClassifier`: its file's size)."""
    if hasattr(model, "cost"):
        return model.cost()
    return {"params": count_parameters(model), "size_mb": model_size_mb(model)}


def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s inputs go: its parameters' device, or its `device` when torch holds none of its weights
    (`nlpkd.export.OnnxClassifier`)."""
    parameter = next(model.parameters(), None)
    return model.device if parameter is None else parameter.device


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
    device = model_device(model)
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


def forward_timer(
    model: torch.nn.Module, tokenizer, typical_text: str, texts: list[str], max_length: int
) -> Callable[[], dict[str, float]]:
    """One round of `model`'s forward speed, for `measure_speed`: the batch-1 latency on `typical_text` (median of 5
    passes after 1 untimed) and the batch-32 throughput over `texts` (median of 3 after 1). A round is kept short
    so that the models timed in turns with it meet the same load."""

    def one_round() -> dict[str, float]:
        return {
            "latency_ms_b1": measure_latency(model, tokenizer, [typical_text], 1, max_length, warmup=1, repeats=5),
            "throughput_b32": throughput(model, tokenizer, texts, 32, max_length, warmup=1, repeats=3),
        }

    return one_round


def generation_timer(
    model: torch.nn.Module, tokenizer, text: str, **generate_kwargs
) -> Callable[[], dict[str, float]]:
    """One round of `model`'s translation speed, for `measure_speed`: the batch-1 `generation_latency` of `text`
    (median of 3 after 1 untimed) with `generate_kwargs` (e.g. num_beams)."""
    return lambda: {
        "latency_ms_b1": generation_latency(model, tokenizer, text, warmup=1, repeats=3, **generate_kwargs)
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
    device = model_device(model)
    inputs = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt").to(device)
    inputs.pop("token_type_ids", None)
    return _median_ms(model, lambda: model.generate(**inputs, **generate_kwargs), warmup, repeats)


def _median_ms(model: torch.nn.Module, run, warmup: int, repeats: int) -> float:
    """Median milliseconds of `run()` over `repeats` timed calls after `warmup` untimed ones, with `model` in eval
    mode under `torch.inference_mode()` (its train/eval mode restored afterwards)."""
    device = model_device(model)
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


def timing_rounds(
    timers: dict[str, Callable[[], dict[str, float]]],
    num_rounds: int = SPEED_ROUNDS,
    show_progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, dict[str, float]]]:
    """Each model's timer once per round, the models in turns (the order reversed every other round, so that none
    always runs first), for `num_rounds` rounds: [{model: timings}, ...].

    Timed in turns, every model meets whatever load the machine has at that moment, so a ratio taken within one
    round compares like with like; timed one model after the other, minutes apart, a job that starts in between
    makes one model look slow. With `show_progress` the rounds log their progress (`nlpkd.progress`).
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}.")
    names = list(timers)
    progress = Progress(f"speed of {', '.join(names)} in turns", num_rounds, "rounds", show=show_progress, clock=clock)
    rounds = []
    for index in range(num_rounds):
        order = names if index % 2 == 0 else names[::-1]
        timings = {name: timers[name]() for name in order}
        rounds.append({name: timings[name] for name in names})
        progress.update(1)
    return rounds


def median_speed(rounds: list[dict[str, dict[str, float]]], reference: str = "teacher") -> dict[str, dict[str, float]]:
    """Per model, the median over `rounds` of each timing and, for the models other than `reference`, the median
    over rounds of that round's speed-up against it: `speedup_b1` = reference latency / latency, `speedup_b32` =
    throughput / reference throughput. A ratio within one round cancels a load both models met; the median drops
    the rounds where the load changed between the two."""
    speed = {}
    for name, timings in rounds[0].items():
        speed[name] = {key: statistics.median(round_[name][key] for round_ in rounds) for key in timings}
        if name == reference or reference not in rounds[0]:
            continue
        for speedup, (key, smaller_is_faster) in SPEEDUPS.items():
            if key in timings and key in rounds[0][reference]:
                faster, slower = (reference, name) if smaller_is_faster else (name, reference)
                speed[name][speedup] = statistics.median(
                    round_[faster][key] / round_[slower][key] for round_ in rounds
                )
    return speed


def measure_speed(
    timers: dict[str, Callable[[], dict[str, float]]], num_rounds: int = SPEED_ROUNDS, show_progress: bool = True
) -> tuple[dict[str, dict[str, float]], list[dict[str, dict[str, float]]]]:
    """`median_speed` of `timing_rounds`: (per-model medians and speed-ups against the teacher, the rounds)."""
    rounds = timing_rounds(timers, num_rounds, show_progress)
    return median_speed(rounds), rounds


def accuracy_confidence_interval(accuracy: float, n: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation confidence interval (95 % for z=1.96) of an accuracy on n examples."""
    if not 0 <= accuracy <= 1 or n < 1:
        raise ValueError(f"Need 0 <= accuracy <= 1 and n >= 1; got accuracy={accuracy}, n={n}.")
    return z * math.sqrt(accuracy * (1 - accuracy) / n)


def majority_class_rate(labels: Sequence) -> float:
    """The share of `labels` taken by the most frequent one: the accuracy of always predicting it."""
    if len(labels) == 0:
        raise ValueError("labels is empty: the majority-class rate needs at least one label.")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def classification_verdict(entry: dict, majority_rate: float | None) -> str:
    """Whether a classifier's result is worth anything: one of `VERDICTS`.

    "majority_class": its accuracy is no better than always predicting the most frequent class — the accuracy's 95 %
    interval (`accuracy_ci`, 0 when absent) reaches down to `majority_rate`, so on this split it cannot be told
    from that trivial predictor. "low_macro_f1": its macro-F1 (`f1`) is more than `F1_GAP` below its accuracy, so it
    gets the frequent classes right and misses the rare ones. "ok" otherwise, or when the scores are missing.
    """
    accuracy, f1 = entry.get("accuracy"), entry.get("f1")
    if accuracy is None:
        return "ok"
    if majority_rate is not None and accuracy - (entry.get("accuracy_ci") or 0.0) <= majority_rate:
        return "majority_class"
    if f1 is not None and f1 < accuracy - F1_GAP:
        return "low_macro_f1"
    return "ok"


def health_warnings(results: dict) -> list[str]:
    """One warning per model of `results` whose `classification_verdict` is not "ok" (against the top-level
    `majority_class_rate`), saying what is wrong, the likely causes and what to try; then those of the data checks
    (`data_checks`, see `nlpkd.data.split_checks`), marked "data:"."""
    majority_rate = results.get("majority_class_rate")
    warnings = []
    for name, entry in _models(results).items():
        verdict = classification_verdict(entry, majority_rate)
        if verdict == "ok":
            continue
        accuracy = f"accuracy {entry['accuracy']:.1%}"
        if entry.get("accuracy_ci") is not None:
            accuracy += f" ± {entry['accuracy_ci']:.1%}"
        f1 = f"macro-F1 {entry['f1']:.1%}" if entry.get("f1") is not None else "macro-F1 not measured"
        majority = f"majority-class rate {majority_rate:.1%}" if majority_rate is not None else ""
        if verdict == "majority_class":
            problem = f"{name} is no better than always predicting the majority class ({accuracy} vs {majority}; {f1})"
        else:
            problem = f"{name}'s {f1} is far below its {accuracy} (more than {F1_GAP:.0%} apart"
            problem += f"; {majority})" if majority else ")"
            problem += ": it misses the rarer classes"
        warnings.append(f"{problem}. Likely causes: {_likely_causes(name)}")
    return warnings + [f"data: {warning}" for warning in results.get("data_checks", {}).get("warnings", [])]


def _likely_causes(name: str) -> str:
    if name == "teacher":
        return (
            "the teacher's fine-tuning was too short or its learning rate is off for this data (raise "
            "--teacher_num_train_epochs, try another --teacher_learning_rate, and pass --finetune_teacher to train "
            "it again); every student learns from this teacher."
        )
    rate = "a learning rate too high or too low for this model (try --learning_rate 1e-4 or 5e-4)"
    imbalance = "or imbalanced classes, which reward predicting the frequent one alone"
    if name == "baseline":
        return f"too few training steps (raise --num_train_epochs); {rate}; {imbalance}."
    return (
        "too few training steps for the loss set: the hidden-state and attention losses, when on, outweigh the "
        "prediction loss early in training, so the classifier learns last (raise --num_train_epochs, or distil from "
        f"the logits alone with --hidden_weight 0 --attention_weight 0); {rate}; {imbalance}."
    )


def format_results_table(results: dict) -> str:
    """A plain-text table of `results` plus retention and speed-up lines against the teacher, and a warning line for
    each model no better than guessing (`health_warnings`).

    `results` maps each model (e.g. "teacher", "student", "baseline") to a dict with any of `accuracy`, `f1`
    (fractions), `accuracy_ci` (half-width, a fraction), `params`, `size_mb`, `latency_ms_b1`, `throughput_b32`,
    `speedup_b1` (the median of per-round ratios, else the ratio of the latencies is shown); entries that are not
    models (such as "retention") are skipped and missing values show as "-". A top-level `majority_class_rate`
    is shown under the table, and `speed_rounds` (the timing rounds) gives their count on the speed-up line.
    """
    models = _models(results)
    columns = _columns(models)
    rows = [["model", *(header for _, header, _, _ in columns)]]
    for name, entry in models.items():
        rows.append([name, *(_format_cell(entry, key, scale, decimals) for key, _, scale, decimals in columns)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if results.get("majority_class_rate") is not None:
        lines.append(
            f"majority-class rate (always predicting the most frequent class): {results['majority_class_rate']:.1%}"
        )
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
        rounds = (
            f" (median of {len(results['speed_rounds'])} interleaved rounds)" if results.get("speed_rounds") else ""
        )
        lines.append(f"speed-up over teacher at batch 1{rounds}: " + ", ".join(speedup))
    lines += [f"WARNING: {warning}" for warning in health_warnings(results)]
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
    # Quality columns appear when some model has them (accuracy for classifiers, perplexity for LMs), and so does
    # the decoding of translation models.
    return [c for c in COLUMNS if c[0] not in OPTIONAL_KEYS or any(c[0] in entry for entry in models.values())]


def _retained_key(teacher: dict) -> str:
    return next((key for key in RETAINED_KEYS if teacher.get(key)), "accuracy")


def _retention(entry: dict, teacher: dict, key: str) -> float | None:
    if entry.get(key) is None or not teacher.get(key):
        return None
    return entry[key] / teacher[key]


def _speedup(entry: dict, teacher: dict) -> float | None:
    if entry.get("speedup_b1"):  # the median of per-round ratios (`median_speed`)
        return entry["speedup_b1"]
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
    if isinstance(value, str):
        return value
    cell = f"{value * scale:.{decimals}f}"
    if entry.get(f"{key}_ci") is not None:
        cell += f" ± {entry[f'{key}_ci'] * scale:.{decimals}f}"
    return cell
