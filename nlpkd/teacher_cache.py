"""A teacher-logits cache: run the teacher once over a training set and keep its top-k logits on disk.

`load_or_build_teacher_cache` keys a cache by a fingerprint of the teacher (its class, config and every tensor of
its state dict), of the data (every value of every column the teacher's batches are made from, in order) and of the
settings (k, the logit level, the collator class). The temperature is not part of a single teacher's key: the loss
applies it. Several teachers are cached as the one teacher that stands for them in logit KD (see
`nlpkd.losses.teacher_mixture_logits`: T·log of the weighted mixture of their tempered distributions), so their key
holds every teacher's fingerprint, the weights and the temperature.
A change of any part gives a new key, so a new folder `<cache_dir>/<key>/` is built; the old one stays for runs
that still use it. A folder is written under a temporary name and renamed when complete, so a folder with the key's
name is either whole or damaged from outside — and a damaged one is an error, never used and never rebuilt silently.

Row i of the cache holds, for each distilled position of training example i (one for a classifier; each position
with a label for a token classifier or causal LM, see `nlpkd.positions.logit_mask`), flattened position-major:
`values` (the teacher's top-k logits, float16), `indices` (their class ids, int16 when the classes fit, else int32)
and `rest` (the logsumexp of its other logits, float16; -inf when k covers every class).
"""

import json
import logging
import os
import shutil
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.table import InMemoryTable
from transformers import PreTrainedModel

from .arguments import normalised_teacher_weights
from .fingerprint import data_digest, file_digest, settings_key, teacher_digest
from .losses import teacher_mixture_logits
from .positions import distilled_rows
from .progress import Progress

logger = logging.getLogger(__name__)

CACHE_ROW = "teacher_cache_row"  # the training set's column naming each example's cache row
METADATA_NAME = "teacher_cache.json"
FORMAT_VERSION = 1


class TeacherCacheError(ValueError):
    """A cache folder that cannot be trusted: missing or altered files, or metadata that do not match."""


@dataclass
class TeacherCache:
    """A loaded cache: `lookup` returns the teacher's top-k logits of some training examples."""

    path: str
    rows: datasets.Dataset  # arrow-formatted
    top_k: int
    num_classes: int

    def lookup(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values (N, k) float16, indices (N, k) int64, rest (N,) float16, positions per row (B,) int64) of the
        cache rows `rows`; the N positions are those of rows[0], then rows[1], ..., each in sequence order."""
        table = self.rows[rows]  # a pyarrow.Table: the rows' lists, in the order asked

        def flat(name: str) -> torch.Tensor:
            return torch.tensor(table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False))

        counts = torch.tensor(pc.list_value_length(table["rest"]).to_numpy(zero_copy_only=False), dtype=torch.long)
        values = flat("values").view(-1, self.top_k)
        indices = flat("indices").long().view(-1, self.top_k)
        return values, indices, flat("rest"), counts


@dataclass(frozen=True)
class CachedTeachers:
    """The teacher(s) a cache is made of: one model, or several mixed with `weights` at `temperature`."""

    models: list[PreTrainedModel]
    weights: list[float]
    temperature: float

    @torch.no_grad()
    def logits(self, features: dict) -> torch.Tensor:
        """fp32 logits of one batch: the single teacher's, or the logits that stand for the mixture."""
        logits = [model(**features).logits.float() for model in self.models]
        return teacher_mixture_logits(logits, self.weights, self.temperature, "kl")


def as_cached_teachers(
    teacher: PreTrainedModel | list[PreTrainedModel], weights: list[float] | None, temperature: float
) -> CachedTeachers:
    models = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    return CachedTeachers(models, normalised_teacher_weights(weights, len(models)), temperature)


@torch.no_grad()
def _teacher_top_k(
    teachers: CachedTeachers, batch: dict, level: str, top_k: int, label_names: list[str]
) -> dict[str, np.ndarray]:
    """The teachers' top-k at the distilled positions of one batch, computed in fp32 and rounded to float16."""
    features = {name: value for name, value in batch.items() if name not in label_names}
    # (N, C), row-major: the order in which the cached-logits term selects the student's logits.
    logits, counts = distilled_rows(batch, teachers.logits(features), level)
    values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    rest = logits.scatter(-1, indices, float("-inf")).logsumexp(-1)  # -inf when the top-k is every class
    return {
        "counts": counts.cpu().numpy(),
        "values": values.half().cpu().numpy(),
        "indices": indices.cpu().numpy(),
        "rest": rest.half().cpu().numpy(),
        "num_classes": logits.shape[-1],
    }


def _list_array(flat: np.ndarray, counts: np.ndarray) -> pa.LargeListArray:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))


def build_teacher_cache(
    path: str,
    teachers: CachedTeachers,
    dataset: datasets.Dataset,
    collator,
    level: str,
    top_k: int,
    label_names: list[str],
    batch_size: int = 32,
    metadata: dict | None = None,
    show_progress: bool = True,
) -> None:
    """Run the `teachers` (on their device, in eval mode) over `dataset` in order, batched by `collator`, and save each
    example's top-k logits to `path` (layout: the module docstring) with `metadata` and the files' checksums; with
    `show_progress`, log the rows done and the time left (`nlpkd.progress`)."""
    if len(dataset) == 0:
        raise ValueError("The training set is empty: there is nothing to cache the teacher's logits of.")
    device = next(teachers.models[0].parameters()).device
    parts = []
    progress = Progress("teacher logits cache", len(dataset), "rows", show_progress)
    # Batched by hand rather than by a DataLoader, which draws a seed from the global RNG: building the cache must
    # leave the training run's shuffling and dropout as they would be without it.
    for start in range(0, len(dataset), batch_size):
        columns = dataset[start : start + batch_size]
        batch = collator([dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)])
        batch = {name: value.to(device) for name, value in batch.items() if isinstance(value, torch.Tensor)}
        parts.append(_teacher_top_k(teachers, batch, level, top_k, label_names))
        progress.update(min(batch_size, len(dataset) - start))
    num_classes = parts[0]["num_classes"]
    stored_k = parts[0]["values"].shape[-1]
    counts = np.concatenate([part["counts"] for part in parts])
    index_type = np.int16 if num_classes <= np.iinfo(np.int16).max + 1 else np.int32
    flat = {name: np.concatenate([part[name].reshape(-1) for part in parts]) for name in ("values", "indices", "rest")}
    table = pa.table(
        {
            "values": _list_array(flat["values"], counts * stored_k),
            "indices": _list_array(flat["indices"].astype(index_type), counts * stored_k),
            "rest": _list_array(flat["rest"], counts),
        }
    )
    partial = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    datasets.Dataset(InMemoryTable(table)).save_to_disk(partial)
    files = {name: file_digest(os.path.join(partial, name)) for name in sorted(os.listdir(partial))}
    metadata = {
        **(metadata or {}),
        "num_rows": len(dataset),
        "num_positions": int(counts.sum()),
        "stored_top_k": stored_k,
        "num_classes": num_classes,
        "files": files,
    }
    with open(os.path.join(partial, METADATA_NAME), "w", encoding="utf-8") as file:
        json.dump(metadata, file, indent=2, sort_keys=True)
    os.replace(partial, path)


def load_teacher_cache(path: str, key: str, num_rows: int) -> TeacherCache:
    """Load the cache folder `path` written for `key`, checking every file against its metadata; a cache that
    fails a check raises `TeacherCacheError` (delete the folder to rebuild it)."""

    def corrupt(reason: str) -> TeacherCacheError:
        return TeacherCacheError(
            f"The teacher-logits cache at {path} is corrupt: {reason}. It is not used; delete that folder and the "
            "next run rebuilds it (running the teacher over the training set once more)."
        )

    try:
        with open(os.path.join(path, METADATA_NAME), encoding="utf-8") as file:
            metadata = json.load(file)
    except FileNotFoundError:
        raise corrupt(f"{METADATA_NAME} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise corrupt(f"{METADATA_NAME} is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("key") != key:
        found = metadata.get("key") if isinstance(metadata, dict) else None
        raise corrupt(f"{METADATA_NAME} is for fingerprint {found!r}, but the folder and this run expect {key!r}")
    if metadata.get("format") != FORMAT_VERSION:
        raise corrupt(f"format {metadata.get('format')!r} is not this version's {FORMAT_VERSION}")
    for name, expected in metadata.get("files", {}).items():
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            raise corrupt(f"{name} is missing")
        if file_digest(file_path) != expected:
            raise corrupt(f"{name} does not match the checksum written with it")
    if not metadata.get("files"):
        raise corrupt(f"{METADATA_NAME} lists no data files")
    missing = [name for name in ("num_rows", "stored_top_k", "num_classes") if name not in metadata]
    if missing:
        raise corrupt(f"{METADATA_NAME} lacks {missing}")
    rows = datasets.load_from_disk(path)
    if not metadata["num_rows"] == len(rows) == num_rows:
        raise corrupt(
            f"it holds {len(rows)} rows and its metadata says {metadata['num_rows']}, but the training set has "
            f"{num_rows}"
        )
    return TeacherCache(path, rows.with_format("arrow"), metadata["stored_top_k"], metadata["num_classes"])


def load_or_build_teacher_cache(
    cache_dir: str,
    teacher: PreTrainedModel | list[PreTrainedModel],
    dataset: datasets.Dataset,
    collator,
    level: str,
    top_k: int,
    label_names: list[str],
    batch_size: int = 32,
    show_progress: bool = True,
    teacher_weights: list[float] | None = None,
    temperature: float = 1.0,
) -> TeacherCache:
    """The cache of `teacher`'s top-k logits over `dataset` (as `collator` batches it) under `cache_dir`: loaded
    when one with the same fingerprint exists, else built first (logging its progress with `show_progress`).
    `dataset` holds only what the collator reads. `teacher` may be a list of teachers, mixed with `teacher_weights`
    (summing to 1; default equal) at `temperature` (see the module docstring)."""
    teachers = as_cached_teachers(teacher, teacher_weights, temperature)
    if len(teachers.models) == 1:  # the key of caches written before several teachers could be cached
        teacher_key = {"teacher": teacher_digest(teachers.models[0])}
    else:
        teacher_key = {
            "teachers": [teacher_digest(model) for model in teachers.models],
            "teacher_weights": teachers.weights,
            "temperature": temperature,
        }
    parts = {
        "format": FORMAT_VERSION,
        **teacher_key,
        "data": data_digest(dataset),
        "settings": {
            "top_k": top_k,
            "level": level,
            "collator": getattr(collator, "__qualname__", type(collator).__qualname__),  # a function or a class
        },
    }
    key = settings_key(parts)
    path = os.path.join(cache_dir, key)
    if not os.path.exists(path):
        logger.info("Caching the teacher's top-%d logits over %d examples in %s", top_k, len(dataset), path)
        os.makedirs(cache_dir, exist_ok=True)
        build_teacher_cache(
            path,
            teachers,
            dataset,
            collator,
            level,
            top_k,
            label_names,
            batch_size,
            {**parts, "key": key},
            show_progress,
        )
    else:
        logger.info("Loading the teacher's cached logits from %s", path)
    return load_teacher_cache(path, key, len(dataset))


class CacheRowCollator:
    """Wraps a data collator: takes each example's `teacher_cache_row` out before the wrapped collator sees it, and
    adds the batch's rows back as a (B,) tensor. Examples without the column (evaluation) pass through unchanged."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]):
        if not features or CACHE_ROW not in features[0]:
            return self.collator(features)
        rows = torch.tensor([feature[CACHE_ROW] for feature in features])
        batch = self.collator([{k: v for k, v in feature.items() if k != CACHE_ROW} for feature in features])
        batch[CACHE_ROW] = rows
        return batch
