"""Overhead of one distillation step over its unavoidable parts, measured in one run.

    ratio = (one DistillationTrainer optimisation step, all four losses on)
            / (one teacher forward + one plain student training step)

and the same ratio with logit KD only, to show what the hidden and attention losses cost.

on the packaged MiniLM teacher (6L-384H) and a TinyBERT4 student (4L-312H), batch 32 x 64 tokens. Target: <= 1.05.
The three timings are interleaved round by round so that machine noise hits them alike; medians are reported.

    python benchmarks/step_overhead.py [--rounds 15] [--batch_size 32] [--seq_len 64] [--threads 2]
"""

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from nlpkd import DistillationArguments, DistillationTrainer, make_student
from nlpkd.assets import minilm_path


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)

    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    teacher.requires_grad_(False)
    student = make_student(teacher)
    plain_student = make_student(teacher)
    shape = (options.batch_size, options.seq_len)
    batch = {
        "input_ids": torch.randint(1000, teacher.config.vocab_size, shape),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "labels": torch.randint(0, 2, (options.batch_size,)),
    }
    batch["attention_mask"][: options.batch_size // 4, options.seq_len // 2 :] = 0  # some padded rows
    features = {name: value for name, value in batch.items() if name != "labels"}

    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {
            "kd_step_all_losses": distillation_trainer(
                teacher, student, output_dir, hidden_weight=1.0, attention_weight=1.0
            ),
            "kd_step_logits_only": distillation_trainer(teacher, make_student(teacher), output_dir),
        }
        # The plain step runs through a plain Trainer too, so both sides share optimizer and step code.
        plain = Trainer(model=plain_student, args=TrainingArguments(output_dir, report_to="none", use_cpu=True))
        plain.create_optimizer()
        plain.current_gradient_accumulation_steps = 1

        def teacher_forward():
            with torch.no_grad():
                teacher(**features)

        def student_step():
            plain.training_step(plain.model, dict(batch))
            plain.optimizer.step()
            plain.optimizer.zero_grad()

        def distillation_step(trainer):
            return lambda: (
                trainer.training_step(trainer.model, dict(batch)),
                trainer.optimizer.step(),
                trainer.optimizer.zero_grad(),
            )

        steps = {"teacher_forward": teacher_forward, "student_step": student_step}
        steps.update({name: distillation_step(trainer) for name, trainer in trainers.items()})
        seconds = {name: [] for name in steps}
        for round_index in range(options.warmup + options.rounds):
            for name, step in steps.items():
                elapsed = timed(step)
                if round_index >= options.warmup:
                    seconds[name].append(elapsed)

    median_ms = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    unavoidable = median_ms["teacher_forward"] + median_ms["student_step"]
    print(f"batch {options.batch_size} x {options.seq_len} tokens, {options.threads} threads, {options.rounds} rounds")
    for name, value in median_ms.items():
        print(f"  {name:20s} {value:8.1f} ms (median)")
    print(
        f"P1 step overhead, logits only = kd_step / (teacher_forward + student_step) = "
        f"{median_ms['kd_step_logits_only'] / unavoidable:.3f}"
    )
    print(
        f"P1 step overhead, all losses  = kd_step / (teacher_forward + student_step) = "
        f"{median_ms['kd_step_all_losses'] / unavoidable:.3f}  (target <= 1.05)"
    )


def distillation_trainer(teacher, student, output_dir: str, **weights) -> DistillationTrainer:
    args = DistillationArguments(output_dir=output_dir, report_to="none", use_cpu=True, disable_tqdm=True, **weights)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the steps here run outside it
    return trainer


if __name__ == "__main__":
    main()
