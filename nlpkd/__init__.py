"""nlpkd: distil Hugging Face Transformers NLP models into small, fast TinyBERT-style students."""

from .arguments import DistillationArguments, Seq2SeqDistillationArguments
from .distillation_model import DistillationModel
from .seq2seq import Seq2SeqDistillationTrainer
from .student import make_student
from .trainer import DistillationTrainer

__all__ = [
    "DistillationArguments",
    "DistillationModel",
    "DistillationTrainer",
    "Seq2SeqDistillationArguments",
    "Seq2SeqDistillationTrainer",
    "make_student",
]
__version__ = "0.1.0"
