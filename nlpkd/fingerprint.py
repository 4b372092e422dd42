"""Fingerprints: stable hashes of models, data and settings, which name and check the caches nlpkd keeps on disk.

A cache is found again by its fingerprint, so a change in any input gives a new cache, never a stale one: fine-tuned
teachers, target tokenizers and the teacher's translations are named by a `fingerprint` of their settings and data;
the teacher-logits cache by the `settings_key` of `teacher_digest`s, `data_digest` and its settings, its files
checked by `file_digest`. Every hash is computed from the values themselves, never from `str()` or `datasets`'
in-memory fingerprints, so that the next run (another process, another day) computes the same one.
"""

import hashlib
import json
import pickle

import datasets
import torch
from transformers import PreTrainedModel

# Config fields that differ between a model trained in this process and the same model loaded back from disk
# (the Trainer turns `use_cache` off; `dtype` is only written on save), or that name where it came from.
_NOT_IDENTITY = ("transformers_version", "use_cache", "dtype", "torch_dtype")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (settings, data digests) for cache folder names.

    Other iterables (a `datasets` column, an array) are hashed element by element: never by their `str()`, which
    for a `datasets.Column` shows only the first rows.
    """
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=_jsonable).encode("utf-8"))
    return digest.hexdigest()[:12]


def settings_key(settings: dict) -> str:
    """The teacher-logits cache's key: sha256 of the JSON of `settings`, 16 hex digits (the form its first caches
    were written under, so that they stay valid)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(value):
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return list(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def teacher_digest(teacher: PreTrainedModel) -> str:
    """sha256 of the teacher's class, config (less its path, library version and run-time switches, in nested
    configs too) and state-dict tensors: a teacher fine-tuned in this run and the same teacher loaded by the next
    run share it, so a cache made from either is found by both."""
    digest = hashlib.sha256(type(teacher).__name__.encode())
    digest.update(json.dumps(_identity(teacher.config.to_dict()), sort_keys=True, default=str).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _identity(config: dict) -> dict:
    return {
        name: _identity(value) if isinstance(value, dict) else value
        for name, value in config.items()
        if not (isinstance(name, str) and (name.startswith("_") or name in _NOT_IDENTITY))  # (id2label has ints)
    }


def data_digest(dataset: datasets.Dataset) -> str:
    """sha256 of every value of every column, in row order, with the features (types) of the columns."""
    digest = hashlib.sha256(f"{len(dataset)}:{dataset.features}".encode())
    for batch in dataset.with_format("arrow").iter(batch_size=1024):
        for name in sorted(batch.column_names):
            digest.update(name.encode())
            digest.update(pickle.dumps(batch.column(name).to_pylist(), protocol=4))
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
