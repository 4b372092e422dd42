"""P5: peak memory of a distillation run against its unavoidable parts, measured in one run.

    P5 = peak memory of KD training (all four losses, and logit KD alone)
         / (peak memory of teacher inference + peak memory of plain student training)

on the workloads of `workloads.py` (default: the packaged MiniLM teacher and a TinyBERT4 student, classification,
batch 32 x 64 tokens; `--task causal_lm`: the language-modelling default's shape, 32 x 128 tokens over a 30,522-token
vocabulary). Target: <= 1.10. Each part runs in a fresh process; its memory is the peak resident set size
(`ru_maxrss`) minus the resident set size just before it loads a model, so the interpreter and the imported libraries
count in none of them. On a CUDA machine (`--device cuda`) the parts report `torch.cuda.max_memory_allocated`.

    python benchmarks/peak_memory.py [--task classification|causal_lm] [--teacher minilm|bert-base] [--steps 4]
        [--batch_size 32] [--seq_len N] [--threads 2] [--device cpu|cuda] [--bf16]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer
from workloads import (
    ALL_LOSSES,
    add_workload_arguments,
    build_student,
    build_teacher,
    describe,
    make_batch,
    optimizer_step,
    prepared,
    resolve,
    teacher_forward,
    training_arguments,
)

from nlpkd import DistillationTrainer

PARTS = ("teacher_inference", "student_training", "kd_training", "kd_logits_only")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_part(options) -> int:
    """Run one part in this process and return the memory it took, in bytes."""
    cuda = options.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    if options.part == "teacher_inference":
        teacher = build_teacher(options)
        batch = make_batch(options, teacher.config.vocab_size)
        features = {name: value for name, value in batch.items() if name != "labels"}
        for _ in range(options.steps):
            teacher_forward(teacher, features, options)
    else:
        student_class = AutoModelForCausalLM if options.task == "causal_lm" else AutoModelForSequenceClassification
        student = student_class.from_pretrained(options.student_dir).to(options.device)  # one student for all parts
        batch = make_batch(options, student.config.vocab_size)
        if options.part == "student_training":
            trainer = Trainer(model=student, args=training_arguments(options, options.output_dir, False))
        else:
            losses = {} if options.part == "kd_logits_only" else ALL_LOSSES
            args = training_arguments(options, options.output_dir, True, **losses)
            trainer = DistillationTrainer(model=student, teacher_model=build_teacher(options), args=args)
        train_steps(trainer, batch, options)
    if cuda:
        return torch.cuda.max_memory_allocated() - before
    return peak_resident_bytes() - before


def train_steps(trainer: Trainer, batch: dict[str, torch.Tensor], options) -> None:
    """Optimizer steps through the trainer's own training_step (the optimizer's state appears at the first)."""
    prepared(trainer)
    for _ in range(options.steps):
        optimizer_step(trainer, batch)


def measure(part: str, options, student_dir: str, output_dir: str) -> int:
    command = [sys.executable, __file__, "--part", part, "--student_dir", student_dir, "--output_dir", output_dir]
    for name in ("task", "teacher", "steps", "batch_size", "seq_len", "threads", "device"):
        command += [f"--{name}", str(getattr(options, name))]
    command += ["--bf16"] if options.bf16 else []
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--student_dir", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    options = resolve(parser.parse_args())
    if options.part:
        print(json.dumps({"bytes": run_part(options)}))
        return
    with tempfile.TemporaryDirectory() as student_dir, tempfile.TemporaryDirectory() as output_dir:
        build_student(build_teacher(options)).save_pretrained(student_dir)
        mib = {part: measure(part, options, student_dir, output_dir) / 2**20 for part in PARTS}
    print(f"{describe(options)}, {options.steps} optimizer steps")
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
