"""Argument groups the recipes share: which teacher, which student, and the recipe's stages."""

from dataclasses import dataclass, field
from typing import Literal

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
    student_init: Literal["random", "teacher_layers"] = field(
        default="random",
        metadata={
            "help": "'random', or 'teacher_layers' (copy embeddings and uniformly mapped layers; needs the "
            "teacher's widths).",
            "choices": STUDENT_INITS,
        },
    )
    no_baseline: bool = field(
        default=False, metadata={"help": "Skip training the same student without distillation (the baseline)."}
    )
