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
    teacher: PreTrainedModel, dataset: datasets.Dataset, cache_dir: str, pad_token_id: int, **settings
) -> datasets.Dataset:
    """`dataset` (tokenized: input_ids, attention_mask, labels) with `labels` replaced by the teacher's best
    beam-search translation of each source: the first of `teacher_hypotheses` (`settings`: its keyword arguments,
    num_beams, max_new_tokens, batch_size, max_length_ratio, show_progress and `generate` settings)."""
    hypotheses = teacher_hypotheses(teacher, dataset, cache_dir, pad_token_id, **settings)
    return dataset.remove_columns("labels").add_column("labels", [best for best, *_ in hypotheses])


def teacher_hypotheses(
    teacher: PreTrainedModel,
    dataset: datasets.Dataset,
    cache_dir: str,
    pad_token_id: int,
    num_beams: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    max_length_ratio: float | None = 2.0,
    num_return_sequences: int = 1,
    show_progress: bool = True,
    **generation,
) -> list[list[list[int]]]:
    """The teacher's `num_return_sequences` best beam-search translations of each source of `dataset` (tokenized:
    input_ids), best first, as labels (ending with its eos when it finished): generated once, then loaded from
    `cache_dir/<fingerprint>`.

    `generation` holds further `generate` settings that shape the translations, such as `no_repeat_ngram_size` or
    `repetition_penalty`; with the beams, lengths and hypotheses they are part of the cache key, so a change
    translates again. Sources are batched by length; with `max_length_ratio`, a batch generates at most that many
    tokens per source token of its longest source (+ 10, and never more than `max_new_tokens`), so that a
    translation stuck in a loop cannot hold its whole batch for `max_new_tokens` steps. The parts generated so far
    are kept in `cache_dir/<fingerprint>.parts` until the whole cache is written, and a later call reuses them.
    With `show_progress`, the source tokens translated and the time left are logged as they go
    (`nlpkd.progress`)."""
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences}: the beam search returns between 1 and num_beams "
            f"({num_beams}) hypotheses per source; raise num_beams or lower num_return_sequences."
        )
    settings = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    if max_length_ratio is not None:
        settings["max_length_ratio"] = max_length_ratio
    # Only the settings given enter the key, so that the caches made before they existed stay valid.
    settings.update({name: value for name, value in generation.items() if value is not None})
    if num_return_sequences > 1:
        settings["num_return_sequences"] = num_return_sequences
    key = fingerprint(teacher_digest(teacher), dataset["input_ids"], settings)
    path = os.path.join(cache_dir, key)
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        logger.info("Loading the teacher's translations from %s", path)
        cached = datasets.load_from_disk(path)
        if len(cached) != len(dataset) * num_return_sequences:
            raise ValueError(
                f"The cached teacher translations in {path} hold {len(cached)} rows for {len(dataset)} sources with "
                f"{num_return_sequences} hypotheses each: the cache is corrupt. Delete that folder to generate them "
                "again."
            )
        return _per_source(cached["labels"], num_return_sequences)
    logger.info(
        "Translating %d training sources with the teacher (beam %d, %s), once; cached in %s",
        len(dataset),
        num_beams,
        settings,
        path,
    )
    parts_dir = path + ".parts"
    labels = _generate(teacher, dataset["input_ids"], settings, batch_size, parts_dir, show_progress)
    datasets.Dataset.from_dict({"labels": labels}).save_to_disk(path)
    open(os.path.join(path, COMPLETE_MARKER), "w").close()
    shutil.rmtree(parts_dir, ignore_errors=True)
    return _per_source(labels, num_return_sequences)


def _per_source(labels: list[list[int]], count: int) -> list[list[list[int]]]:
    """Rows kept `count` consecutive per source (best first) -> one list of `count` rows per source."""
    return [labels[start : start + count] for start in range(0, len(labels), count)]


def _generate(
    teacher: PreTrainedModel,
    sources: list[list[int]],
    settings: dict,
    batch_size: int,
    parts_dir: str,
    show_progress: bool,
) -> list[list[int]]:
    """The labels of every source (`num_return_sequences` consecutive rows each), generated part by part in length
    order (so each batch is the one that a single `generate_by_length` over all sources would make); a part already
    in `parts_dir` for the same sources is loaded."""
    os.makedirs(parts_dir, exist_ok=True)
    count = settings.get("num_return_sequences", 1)
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
    generate_kwargs = {
        name: value for name, value in settings.items() if name not in ("pad_token_id", "max_length_ratio")
    }
    labels: list[list[int] | None] = [None] * (len(sources) * count)
    for part_path, indices, part in parts:
        if part is None:
            rows = generate_by_length(
                teacher,
                [sources[index] for index in indices],
                settings["pad_token_id"],
                batch_size,
                settings.get("max_length_ratio"),
                progress=progress,
                **generate_kwargs,
            )
            part = [_as_labels(row[1:], eos, settings["pad_token_id"]) for row in rows]
            _save_part(part_path, indices, part)
        for position, index in enumerate(indices):
            labels[index * count : (index + 1) * count] = part[position * count : (position + 1) * count]
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
    included, padded rows as generate returns them; with `num_return_sequences` k, k consecutive rows per source,
    best first).

    Sources of similar length batch together (far less padding through beam search); with `max_length_ratio`, a
    batch's `max_new_tokens` is capped by `length_limit` of its longest source. Each batch's source tokens are
    counted on `progress`."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda index: len(sources[index]))
    count = generate_kwargs.get("num_return_sequences", 1)
    generated_rows: list[list[int] | None] = [None] * (len(sources) * count)
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
            generated_rows[index * count : (index + 1) * count] = generated[row * count : (row + 1) * count].tolist()
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
