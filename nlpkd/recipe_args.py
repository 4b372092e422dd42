"""Argument groups the recipes share: which teacher, which student, and the recipe's stages."""

import os
from dataclasses import dataclass, field
from typing import Literal

from transformers import AutoConfig, PretrainedConfig

from .assets import minilm_path
from .student import STUDENT_INITS


@dataclass
class TeacherArguments:
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher: a hub id or local path. Default: the packaged all-MiniLM-L6-v2 BERT (offline)."},
    )
    finetune_teacher: bool = field(
        default=False,
        metadata={"help": "Fine-tune the teacher on the task even when its checkpoint already has a trained head."},
    )
    teacher_num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of teacher fine-tuning."})
    teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of teacher fine-tuning."})
    teacher_seed: int = field(
        default=42,
        metadata={
            "help": "Seed of teacher fine-tuning; apart from --seed, so students of several seeds share a teacher."
        },
    )
    teacher_cache_dir: str = field(
        default="outputs/teachers",
        metadata={"help": "Where fine-tuned teachers are kept, keyed by teacher, data and settings, for reuse."},
    )

    def __post_init__(self):
        check_model_path("teacher_model_name_or_path", self.teacher_model_name_or_path)

    @property
    def teacher_path(self) -> str:
        """The teacher to load: the given hub id or path, else the packaged MiniLM."""
        return self.teacher_model_name_or_path or minilm_path()


@dataclass
class StudentArguments:
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Initialise the student from this checkpoint (e.g. a general-distillation body) instead of "
            "building it from the teacher with the shape below."
        },
    )
    student_num_layers: int = field(default=4, metadata={"help": "Student depth (TinyBERT4: 4)."})
    student_hidden_size: int = field(default=312, metadata={"help": "Student width (TinyBERT4: 312)."})
    student_num_heads: int = field(default=12, metadata={"help": "Student attention heads (TinyBERT4: 12)."})
    student_intermediate_size: int = field(default=1200, metadata={"help": "Student FFN width (TinyBERT4: 1200)."})
    student_decoder_layers: int | None = field(
        default=None, metadata={"help": "Decoder depth of an encoder-decoder student (default: student_num_layers)."}
    )
    student_init: Literal["random", "teacher_layers", "pruned", "auto"] = field(
        default="random",
        metadata={
            "help": "'random', 'teacher_layers' (copy embeddings and uniformly mapped layers; needs the teacher's "
            "widths), 'pruned' (the teacher's most important channels, heads and neurons at any smaller width; "
            "BERT-style teachers) or 'auto' (pruned where it applies, else random).",
            "choices": STUDENT_INITS,
        },
    )
    no_baseline: bool = field(
        default=False, metadata={"help": "Skip training the same student without distillation (the baseline)."}
    )

    def __post_init__(self):
        check_model_path("student_model_name_or_path", self.student_model_name_or_path)
        for name in ("student_num_layers", "student_hidden_size", "student_num_heads", "student_intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.student_decoder_layers is not None and self.student_decoder_layers < 1:
            raise ValueError(f"student_decoder_layers must be >= 1 (or unset), got {self.student_decoder_layers}.")


def check_model_path(field_name: str, path: str | None) -> None:
    """Refuse a local-looking model path that does not exist (a Hub id is `name` or `org/name`), before any stage
    runs: transformers would otherwise report it as a malformed Hub repo id."""
    if path is None or os.path.isdir(path):
        return
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ValueError(
            f"{field_name}={path!r} is not a folder: give the folder of a saved model (with its config.json) or a "
            "Hub id such as 'org/name'."
        )


def position_limit(config: PretrainedConfig) -> int | None:
    """The most tokens a model has position embeddings for (the smaller of an encoder-decoder's two), or None for a
    model with relative positions (T5), which has no such limit."""
    limits = [
        limit
        for part in (config, getattr(config, "encoder", None), getattr(config, "decoder", None))
        if isinstance(limit := getattr(part, "max_position_embeddings", None), int) and limit > 0  # XLNet says -1
    ]
    return min(limits, default=None)


def check_length_limit(
    field: str, length: int, teacher_args: TeacherArguments, student_args: StudentArguments
) -> None:
    """Refuse a recipe's length argument `field` (e.g. max_seq_length) whose value `length` exceeds the position limit
    of the teacher or of a student loaded from `student_model_name_or_path` (a student made from the teacher copies
    its limit): both read the same inputs, and the embedding lookup would fail deep inside training. Reads the
    configs alone, so a recipe calls it before any data or training."""
    paths = {"teacher": teacher_args.teacher_path, "student": student_args.student_model_name_or_path}
    limits = {
        name: limit
        for name, path in paths.items()
        if path is not None and (limit := position_limit(AutoConfig.from_pretrained(path))) is not None
    }
    if not limits:
        return
    name, limit = min(limits.items(), key=lambda item: item[1])
    if length > limit:
        raise ValueError(
            f"{field}={length} exceeds the {name}'s max_position_embeddings={limit}, the most tokens it can read: "
            f"pass --{field} {limit} or less."
        )


def check_sample_limits(data_args) -> None:
    """Refuse a `max_train_samples` / `max_eval_samples` below 1 when a recipe's arguments are parsed, before any
    stage (a limit of 0 left an empty split that failed deep inside `datasets`)."""
    for name in ("max_train_samples", "max_eval_samples"):
        limit = getattr(data_args, name)
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1, got {limit}: leave it unset to use every row.")
