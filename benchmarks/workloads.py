"""The teacher–student pairs and batches that the speed and memory benchmarks share.

Tasks: `classification` (a sequence classifier, batch 32 x 64 tokens) and `causal_lm` (the language-modelling
default's shape: a causal LM over a 30,522-token vocabulary, batch 32 x 128 tokens). Teachers: the packaged MiniLM
(6L-384H, real weights) or a BERT-base-shaped model (12L-768H) built from its config, with no download (its weights
are random; speed does not depend on them). The student is always TinyBERT4 (4L-312H, `nlpkd.make_student`).
"""

import argparse
import time

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertLMHeadModel,
    PreTrainedModel,
    TrainingArguments,
)

from nlpkd import DistillationArguments, make_student
from nlpkd.assets import minilm_path

TASKS = ("classification", "causal_lm")
TEACHERS = ("minilm", "bert-base")
DEFAULT_SEQ_LEN = {"classification": 64, "causal_lm": 128}
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# Every distillation loss the trainer has: logits (on by default), hidden states (+ embeddings), attention maps.
ALL_LOSSES = dict(hidden_weight=1.0, attention_weight=1.0)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="classification")
    parser.add_argument("--teacher", choices=TEACHERS, default="minilm")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, help="tokens per row (default: 64 classification, 128 causal_lm)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as TrainingArguments(bf16=True)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")


def resolve(options: argparse.Namespace) -> argparse.Namespace:
    """Fill the task's default length and set the threads; refuse a CUDA run on a machine without CUDA."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch finds no CUDA device here: run on a GPU machine or drop the flag.")
    options.seq_len = options.seq_len or DEFAULT_SEQ_LEN[options.task]
    torch.set_num_threads(options.threads)
    return options


def describe(options: argparse.Namespace) -> str:
    precision = "bf16 autocast" if options.bf16 else "fp32"
    threads = f", {options.threads} threads" if options.device == "cpu" else ""
    return (
        f"{options.task}, {options.teacher} teacher -> TinyBERT4 student, batch {options.batch_size} x "
        f"{options.seq_len} tokens, {options.device}, {precision}{threads}"
    )


def build_teacher(options: argparse.Namespace) -> PreTrainedModel:
    """The frozen teacher of the workload, in eval mode on the device."""
    torch.manual_seed(0)
    if options.teacher == "bert-base":
        config = BertConfig(**BERT_BASE, num_labels=2, is_decoder=options.task == "causal_lm")
        model_class = BertLMHeadModel if options.task == "causal_lm" else BertForSequenceClassification
        teacher = model_class(config)
    elif options.task == "causal_lm":
        teacher = BertLMHeadModel.from_pretrained(minilm_path(), is_decoder=True)
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    return teacher.requires_grad_(False).eval().to(options.device)


def build_student(teacher: PreTrainedModel) -> PreTrainedModel:
    torch.manual_seed(1)
    return make_student(teacher).to(teacher.device)


def make_batch(options: argparse.Namespace, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with a quarter of the rows half padded; class labels, or next-token labels (= the ids, -100
    on padding) for `causal_lm`."""
    generator = torch.Generator().manual_seed(seed)
    shape = (options.batch_size, options.seq_len)
    input_ids = torch.randint(1000, vocab_size, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    attention_mask[: options.batch_size // 4, options.seq_len // 2 :] = 0
    if options.task == "causal_lm":
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    else:
        labels = torch.randint(0, 2, (options.batch_size,), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {name: value.to(options.device) for name, value in batch.items()}


def training_arguments(options: argparse.Namespace, output_dir: str, distillation: bool, **settings):
    """The arguments both sides train with: DistillationArguments for KD (with `settings`, e.g. loss weights),
    TrainingArguments for the plain student — same device, precision and reporting."""
    common = dict(
        output_dir=output_dir,
        report_to="none",
        use_cpu=options.device == "cpu",
        bf16=options.bf16,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        **settings,
    )
    return DistillationArguments(**common) if distillation else TrainingArguments(**common)


def prepared(trainer):
    """A trainer ready for `training_step` calls outside `train()` (its optimizer made, no accumulation)."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train()
    return trainer


def optimizer_step(trainer, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step through the trainer's own `training_step`, as `Trainer.train()` takes it."""
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()


def synchronised(device: str):
    """A clock that waits for the device's queued work before each reading."""

    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def teacher_forward(teacher: PreTrainedModel, features: dict, options: argparse.Namespace):
    """One teacher forward as the trainer runs it: no gradients, inside the same autocast as training."""
    with torch.no_grad(), torch.autocast(options.device, dtype=torch.bfloat16, enabled=options.bf16):
        return teacher(**features)
