"""Which checkpoint to resume from, and how to keep a folder: never one that a crash (kill -9, out of memory) left
half-written.

The Trainer writes a checkpoint's files one after another and `trainer_state.json` last; it deletes older
checkpoints (`save_total_limit`) only after that. So a checkpoint whose `trainer_state.json` reads as JSON, next to
its weights, is complete, and the one before a half-written one is still on disk.
"""

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable

from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Config fields that fix a model's tensor shapes (sizes, layer and head counts across model families).
_SHAPE_FIELD = re.compile(r"(_size|layers|heads|_dim|^d_model|^n_embd|^n_layer|^n_head|_positions|_embeddings)$")


def incomplete_reason(checkpoint: str) -> str | None:
    """Why `checkpoint` cannot be resumed from (a missing or cut trainer state, no weights), or None if it can."""
    state = os.path.join(checkpoint, TRAINER_STATE)
    if not os.path.isfile(state):
        return f"no {TRAINER_STATE}: the run stopped while writing it"
    try:
        with open(state, encoding="utf-8") as file:
            json.load(file)
    except (ValueError, UnicodeDecodeError):
        return f"{TRAINER_STATE} is cut short: the run stopped while writing it"
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in WEIGHTS):
        return "no model weights"
    return None


def last_complete_checkpoint(folder: str) -> str | None:
    """The complete `checkpoint-N` in `folder` with the largest N (None if none), warning of newer incomplete ones."""
    if not os.path.isdir(folder):
        return None
    steps = {int(match[1]): name for name in os.listdir(folder) if (match := _CHECKPOINT.match(name))}
    for step in sorted(steps, reverse=True):
        path = os.path.join(folder, steps[step])
        if not os.path.isdir(path):
            continue
        reason = incomplete_reason(path)
        if reason is None:
            return path
        logger.warning("Skipping the incomplete checkpoint %s (%s); looking for an earlier one.", path, reason)
    return None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint `Trainer.train(resume_from_checkpoint=...)` should load: True means the last complete one in
    `output_dir` (so does "true", as a command line gives it); a given path must be complete. Raises ValueError
    naming the folder and what to do otherwise."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":  # "true" from a command line
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"resume_from_checkpoint=True, but output_dir={output_dir!r} holds no complete checkpoint to resume "
                "from. Start without resume_from_checkpoint, or pass the output_dir of the run to resume."
            )
        return checkpoint
    checkpoint = str(resume_from_checkpoint)
    if os.path.isdir(checkpoint) and (reason := incomplete_reason(checkpoint)) is not None:
        earlier = last_complete_checkpoint(os.path.dirname(os.path.abspath(checkpoint)))
        instead = (
            f"resume from {earlier}, the last complete one" if earlier else "start without resume_from_checkpoint"
        )
        raise ValueError(f"resume_from_checkpoint={checkpoint!r} is incomplete ({reason}): {instead}.")
    return checkpoint


def save_whole(save: Callable[[str], None], folder: str, marker: str = "config.json") -> None:
    """`save(staging)` into a sibling staging folder, then move its files into `folder` with `marker` last: `folder`
    shows `marker` (what loaders look for) only once every other file is in place, so a kill -9 mid-save is never
    taken for a saved model."""
    staging = folder.rstrip("/") + ".saving"
    shutil.rmtree(staging, ignore_errors=True)  # what a cut save left
    save(staging)
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(staging), key=lambda name: name == marker):
        os.replace(os.path.join(staging, name), os.path.join(folder, name))
    os.rmdir(staging)


def check_checkpoint_student(checkpoint: str, student: PreTrainedModel) -> None:
    """Refuse to resume `student` from a checkpoint of a student of another class or shape, naming what differs
    (torch would fail later, inside the optimizer, with "parameter group doesn't match")."""
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        return
    saved_config = AutoConfig.from_pretrained(checkpoint).to_dict()  # config.json leaves out the defaults
    saved, current = _shape(saved_config), _shape(student.config.to_dict())
    differences = [
        f"{name} {saved.get(name)} (checkpoint) vs {current.get(name)} (this run)"
        for name in sorted(saved.keys() | current.keys())
        if saved.get(name) != current.get(name)
    ]
    saved_classes = saved_config.get("architectures") or []
    if saved_classes and type(student).__name__ not in saved_classes:
        differences.insert(0, f"class {saved_classes[0]} (checkpoint) vs {type(student).__name__} (this run)")
    if differences:
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r} holds another student than this run's: {'; '.join(differences)}. "
            "Resume with the student settings of the run that wrote it (e.g. --student_num_layers, "
            "--student_hidden_size), or train this student in a new output_dir without resume_from_checkpoint."
        )


def check_checkpoint_projections(path: str, projections: nn.ModuleList | None) -> None:
    """Refuse to resume when the checkpoint's hidden-state projections (`path`) and this run's differ in number or
    shape: the loss settings (hidden_weight, layer_map) changed, and the optimizer state would not fit."""
    if not os.path.isfile(path):
        return  # a missing file is the caller's to judge: this run may have nothing to restore
    with safe_open(path, framework="pt") as file:
        saved = Counter(tuple(file.get_slice(name).get_shape()) for name in file.keys())
    current = Counter(tuple(value.shape) for value in (projections.state_dict().values() if projections else ()))
    if saved != current:
        raise ValueError(
            f"{path} holds hidden-state projections {_shapes(saved)}, but this run has {_shapes(current)}: the "
            "checkpoint was trained with other loss settings (hidden_weight, layer_map) or student width, and its "
            "optimizer state would not fit. Resume with the settings of the run that wrote it, or start without "
            "resume_from_checkpoint."
        )


def _shape(config: dict, prefix: str = "") -> dict:
    """The shape-fixing fields of a config dict, those of nested configs (an encoder-decoder's) as `encoder.name`."""
    shape = {f"{prefix}model_type": config.get("model_type")}
    if config.get("id2label"):
        shape[f"{prefix}num_labels"] = len(config["id2label"])
    for name, value in config.items():
        if type(value) is int and _SHAPE_FIELD.search(name):
            shape[prefix + name] = value
        elif isinstance(value, dict) and "model_type" in value:
            shape.update(_shape(value, f"{prefix}{name}."))
    return shape


def _shapes(counts: Counter) -> str:
    return ", ".join(f"{count} × {list(shape)}" for shape, count in sorted(counts.items())) or "none"
