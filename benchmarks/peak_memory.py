"""Peak memory of a distillation run against its unavoidable parts, measured in one run.

    P5 = peak memory of KD training (all four losses, and logit KD alone)
         / (peak memory of teacher inference + peak memory of plain student training)

on the packaged MiniLM teacher (6L-384H) and a TinyBERT4 student (4L-312H), batch 32 x 64 tokens. Target: <= 1.10.
Each part runs in a fresh process; its memory is the peak resident set size (`ru_maxrss`) minus the resident set
size just before it loads a model, so the interpreter and the imported libraries count in none of them. On a CUDA
machine (`--device cuda`) the parts report `torch.cuda.max_memory_allocated` instead.

    python benchmarks/peak_memory.py [--steps 4] [--batch_size 32] [--seq_len 64] [--threads 2] [--device cpu]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from nlpkd import DistillationArguments, DistillationTrainer, make_student
from nlpkd.assets import minilm_path

PARTS = ("teacher_inference", "student_training", "kd_training", "kd_logits_only")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_batch(options) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (options.batch_size, options.seq_len)
    batch = {
        "input_ids": torch.randint(1000, 30000, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "labels": torch.randint(0, 2, (options.batch_size,), generator=generator),
    }
    batch["attention_mask"][: options.batch_size // 4, options.seq_len // 2 :] = 0  # some padded rows
    return {name: value.to(options.device) for name, value in batch.items()}


def run_part(options) -> int:
    """Run one part in this process and return the memory it took, in bytes."""
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    batch = make_batch(options)
    cuda = options.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    use_cpu = not cuda
    if options.part == "teacher_inference":
        teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).to(options.device)
        features = {name: value for name, value in batch.items() if name != "labels"}
        with torch.no_grad():
            for _ in range(options.steps):
                teacher.eval()(**features)
    elif options.part == "student_training":
        student = AutoModelForSequenceClassification.from_pretrained(options.student_dir)
        args = TrainingArguments(options.output_dir, report_to="none", use_cpu=use_cpu)
        train_steps(Trainer(model=student, args=args), batch, options.steps)
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        student = AutoModelForSequenceClassification.from_pretrained(options.student_dir)
        layer_weight = 0.0 if options.part == "kd_logits_only" else 1.0
        args = DistillationArguments(
            options.output_dir,
            report_to="none",
            use_cpu=use_cpu,
            hidden_weight=layer_weight,
            attention_weight=layer_weight,
        )
        train_steps(DistillationTrainer(model=student, teacher_model=teacher, args=args), batch, options.steps)
    if cuda:
        return torch.cuda.max_memory_allocated() - before
    return peak_resident_bytes() - before


def train_steps(trainer: Trainer, batch: dict[str, torch.Tensor], steps: int) -> None:
    """Optimizer steps through the trainer's own training_step (the optimizer's state appears at the first)."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the steps here run outside it
    for _ in range(steps):
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()


def measure(part: str, options, student_dir: str, output_dir: str) -> int:
    command = [sys.executable, __file__, "--part", part, "--student_dir", student_dir, "--output_dir", output_dir]
    for name in ("steps", "batch_size", "seq_len", "threads", "device"):
        command += [f"--{name}", str(getattr(options, name))]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--student_dir", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.part:
        print(json.dumps({"bytes": run_part(options)}))
        return

    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    with tempfile.TemporaryDirectory() as student_dir, tempfile.TemporaryDirectory() as output_dir:
        make_student(teacher).save_pretrained(student_dir)  # one student for both training parts
        del teacher
        mib = {part: measure(part, options, student_dir, output_dir) / 2**20 for part in PARTS}
    print(f"batch {options.batch_size} x {options.seq_len} tokens, {options.steps} optimizer steps, {options.device}")
    for part, value in mib.items():
        print(f"  {part:20s} {value:8.1f} MiB (peak)")
    unavoidable = mib["teacher_inference"] + mib["student_training"]
    print(
        f"P5 peak memory, logits only = kd / (teacher_inference + student_training) = "
        f"{mib['kd_logits_only'] / unavoidable:.3f}"
    )
    print(
        f"P5 peak memory, all losses  = kd / (teacher_inference + student_training) = "
        f"{mib['kd_training'] / unavoidable:.3f}  (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
