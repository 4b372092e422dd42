"""Sequence-level knowledge distillation (Kim & Rush, 2016): the student learns the teacher's translations.

The teacher translates the training sources once with beam search; its outputs replace (or join) the reference
targets. They are cached on disk as a `datasets` dataset keyed by a fingerprint of the teacher's weights, the
tokenized sources and the generation settings, so every later run (another student, another seed) reuses them.
While they are generated, every part of `BATCHES_PER_PART` batches is kept as it finishes, so that a run cut short
goes on from the last finished part instead of translating everything again.
"""

import json
import logging
import os
import shutil

import datasets
import torch
from transformers import PreTrainedModel

from .fingerprint import fingerprint, teacher_digest
from .positions import IGNORE_INDEX
from .progress import Progress

logger = logging.getLogger(__name__)
COMPLETE_MARKER = "nlpkd_pseudo_targets_complete"
# Batches whose translations are saved together while the cache is being built (64 × 16 = 1,024 sources by default).
BATCHES_PER_PART = 16


def teacher_translations(
    teacher: PreTrainedModel,
    dataset: datasets.Dataset,
    cache_dir: str,
    pad_token_id: int,
    num_beams: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    max_length_ratio: float | None = 2.0,
    show_progress: bool = True,
) -> datasets.Dataset:
    """`dataset` (tokenized: input_ids, attention_mask, labels) with `labels` replaced by the teacher's beam-search
    translations of `input_ids` (ending with its eos), generated once and then loaded from
    `cache_dir/<fingerprint>`.

    Sources are batched by length; with `max_length_ratio`, a batch generates at most that many tokens per source
    token of its longest source (+ 10, and never more than `max_new_tokens`), so that a translation stuck in a loop
    cannot hold its whole batch for `max_new_tokens` steps. The parts generated so far are kept in
    `cache_dir/<fingerprint>.parts` until the whole cache is written, and a later call reuses them. With
    `show_progress`, the source tokens translated and the time left are logged as they go (`nlpkd.progress`)."""
    settings = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    if max_length_ratio is not None:
        settings["max_length_ratio"] = max_length_ratio
    key = fingerprint(teacher_digest(teacher), dataset["input_ids"], settings)
    path = os.path.join(cache_dir, key)
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        logger.info("Loading the teacher's translations from %s", path)
        cached = datasets.load_from_disk(path)
        if len(cached) != len(dataset):
            raise ValueError(
                f"The cached teacher translations in {path} hold {len(cached)} rows for {len(dataset)} sources: the "
                "cache is corrupt. Delete that folder to generate them again."
            )
        return dataset.remove_columns("labels").add_column("labels", cached["labels"])
    logger.info(
        "Translating %d training sources with the teacher (beam %d), once; cached in %s", len(dataset), num_beams, path
    )
    parts_dir = path + ".parts"
    labels = _generate(teacher, dataset["input_ids"], settings, batch_size, parts_dir, show_progress)
    datasets.Dataset.from_dict({"labels": labels}).save_to_disk(path)
    open(os.path.join(path, COMPLETE_MARKER), "w").close()
    shutil.rmtree(parts_dir, ignore_errors=True)
    return dataset.remove_columns("labels").add_column("labels", labels)


def _generate(
    teacher: PreTrainedModel,
    sources: list[list[int]],
    settings: dict,
    batch_size: int,
    parts_dir: str,
    show_progress: bool,
) -> list[list[int]]:
    """The labels of every source, generated part by part in length order (so each batch is the one that a single
    `generate_by_length` over all sources would make); a part already in `parts_dir` for the same sources is loaded."""
    os.makedirs(parts_dir, exist_ok=True)
    order = sorted(range(len(sources)), key=lambda index: len(sources[index]))
    part_size = batch_size * BATCHES_PER_PART
    parts = []  # (path, source indices, labels when saved by an earlier run)
    for start in range(0, len(order), part_size):
        indices = order[start : start + part_size]
        part_path = os.path.join(parts_dir, f"part-{start // part_size:05d}.json")
        parts.append((part_path, indices, _load_part(part_path, indices)))
    todo = [index for _, indices, part in parts if part is None for index in indices]
    if len(todo) < len(sources):
        logger.info("Reusing %d translations saved by an earlier run in %s", len(sources) - len(todo), parts_dir)
    # Counted in source tokens, not sentences: they go shortest first, so the sentences done so far would promise an
    # early end.
    progress = Progress(
        "teacher translations", sum(len(sources[index]) for index in todo), "source tokens", show_progress
    )
    eos = teacher.generation_config.eos_token_id
    labels: list[list[int] | None] = [None] * len(sources)
    for part_path, indices, part in parts:
        if part is None:
            rows = generate_by_length(
                teacher,
                [sources[index] for index in indices],
                settings["pad_token_id"],
                batch_size,
                settings.get("max_length_ratio"),
                progress=progress,
                num_beams=settings["num_beams"],
                max_new_tokens=settings["max_new_tokens"],
            )
            part = [_as_labels(row[1:], eos, settings["pad_token_id"]) for row in rows]
            _save_part(part_path, indices, part)
        for index, row in zip(indices, part, strict=True):
            labels[index] = row
    return labels


def _load_part(path: str, indices: list[int]) -> list[list[int]] | None:
    """A saved part's labels, or None when there is none for exactly these sources (e.g. another batch size)."""
    if not os.path.isfile(path):
        return None
    with open(path) as file:
        part = json.load(file)
    return part["labels"] if part["indices"] == indices else None


def _save_part(path: str, indices: list[int], labels: list[list[int]]) -> None:
    partial = path + ".tmp"  # written whole, then renamed: a run killed while writing leaves no half part
    with open(partial, "w") as file:
        json.dump({"indices": indices, "labels": labels}, file)
    os.replace(partial, path)


def generate_by_length(
    model: PreTrainedModel,
    sources: list[list[int]],
    pad_token_id: int,
    batch_size: int = 64,
    max_length_ratio: float | None = None,
    progress: Progress | None = None,
    **generate_kwargs,
) -> list[list[int]]:
    """`model.generate(**generate_kwargs)` over token-id `sources`, returned in their order (decoder start token
    included, padded rows as generate returns them).

    Sources of similar length batch together (far less padding through beam search); with `max_length_ratio`, a
    batch's `max_new_tokens` is capped by `length_limit` of its longest source. Each batch's source tokens are
    counted on `progress`."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda index: len(sources[index]))
    generated_rows: list[list[int] | None] = [None] * len(sources)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(sources[index]) for index in indices)
        input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, index in enumerate(indices):
            input_ids[row, : len(sources[index])] = torch.tensor(sources[index])
            attention_mask[row, : len(sources[index])] = 1
        limits = dict(generate_kwargs)
        limits["max_new_tokens"] = length_limit(width, limits.get("max_new_tokens", 128), max_length_ratio)
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **limits
            )
        for row, index in enumerate(indices):
            generated_rows[index] = generated[row].tolist()
        if progress is not None:
            progress.update(sum(len(sources[index]) for index in indices))
    return generated_rows


def _as_labels(tokens: list[int], eos_token_id, pad_token_id: int) -> list[int]:
    """Generated tokens after the decoder start -> labels: up to and including the first eos, no padding."""
    eos = set(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    labels = []
    for token in tokens:
        if token in eos:
            labels.append(token)
            break
        if token == pad_token_id or token == IGNORE_INDEX:
            break
        labels.append(token)
    return labels


def length_limit(source_length: int, max_new_tokens: int, max_length_ratio: float | None) -> int:
    """Tokens a batch whose longest source has `source_length` tokens may generate."""
    if max_length_ratio is None:
        return max_new_tokens
    return min(max_new_tokens, int(max_length_ratio * source_length) + 10)
