"""P1: the overhead of distillation over its unavoidable parts, measured in one run.

Step mode (default): one optimisation step through the trainer's own `training_step`,

    P1 = (one DistillationTrainer step) / (one teacher forward + one plain student training step)

for logit KD alone, all four losses (hard, logits, hidden states + embeddings, attention maps) and all four plus
MiniLMv2's relation loss. The timings are interleaved round by round so that machine noise hits them alike; medians
are reported. Targets, all losses: <= 1.05 on CPU, <= 1.15 on a GPU; the causal LM: <= 1.15.

Loop mode (`--mode loop`): whole epochs through `Trainer.train()`, as users run them,

    real-loop ratio = (one KD epoch, all four losses) / (one teacher inference epoch + one plain fine-tuning epoch)

over `--batches` batches, fastest of `--rounds` epochs of each kind (target <= 1.15 on CPU).

    python benchmarks/step_overhead.py [--task classification|causal_lm] [--teacher minilm|bert-base]
        [--device cpu|cuda] [--bf16] [--mode step|loop] [--rounds 15] [--batch_size 32] [--seq_len N] [--threads 2]
"""

import argparse
import statistics
import tempfile

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import Trainer, default_data_collator
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
    synchronised,
    teacher_forward,
    training_arguments,
)

from nlpkd import DistillationTrainer

KD_SETTINGS = {
    "kd_step_logits_only": {},
    "kd_step_all_losses": ALL_LOSSES,
    "kd_step_all_plus_relation": {**ALL_LOSSES, "relation_weight": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--mode", choices=("step", "loop"), default="step")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 15 steps, or 2 epochs in loop mode)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed step rounds first")
    parser.add_argument("--batches", type=int, default=24, help="batches per epoch in loop mode")
    options = resolve(parser.parse_args())
    teacher = build_teacher(options)
    with tempfile.TemporaryDirectory() as output_dir:
        if options.mode == "step":
            step_overhead(options, teacher, output_dir)
        else:
            loop_overhead(options, teacher, output_dir)


def step_overhead(options, teacher, output_dir: str) -> None:
    rounds = options.rounds or 15
    batch = make_batch(options, teacher.config.vocab_size)
    features = {name: value for name, value in batch.items() if name != "labels"}
    # The plain step runs through a plain Trainer, so both sides share the optimizer and the step code.
    plain = prepared(Trainer(model=build_student(teacher), args=training_arguments(options, output_dir, False)))
    trainers = {
        name: prepared(
            DistillationTrainer(
                model=build_student(teacher),
                teacher_model=teacher,
                args=training_arguments(options, output_dir, True, **settings),
            )
        )
        for name, settings in KD_SETTINGS.items()
    }

    steps = {
        "teacher_forward": lambda: teacher_forward(teacher, features, options),
        "student_step": lambda: optimizer_step(plain, batch),
    }
    for name, trainer in trainers.items():
        steps[name] = lambda trainer=trainer: optimizer_step(trainer, batch)
    now = synchronised(options.device)
    seconds = {name: [] for name in steps}
    for round_index in range(options.warmup + rounds):
        for name, step in steps.items():
            start = now()
            step()
            if round_index >= options.warmup:
                seconds[name].append(now() - start)

    median_ms = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    unavoidable = median_ms["teacher_forward"] + median_ms["student_step"]
    print(f"{describe(options)}, {rounds} rounds")
    for name, value in median_ms.items():
        print(f"  {name:26s} {value:9.1f} ms (median)")
    target = "1.05" if options.device == "cpu" and options.task == "classification" else "1.15"
    for name in KD_SETTINGS:
        what = name.removeprefix("kd_step_").replace("_", " ")
        print(f"P1 {what:22s} = kd_step / (teacher_forward + student_step) = {median_ms[name] / unavoidable:.3f}")
    print(f"(target for all losses <= {target})")


def loop_overhead(options, teacher, output_dir: str) -> None:
    rounds = options.rounds or 2
    batches = [make_batch(options, teacher.config.vocab_size, seed) for seed in range(options.batches)]
    rows = Dataset.from_dict(
        {name: torch.cat([batch[name] for batch in batches]).cpu().tolist() for name in batches[0]}
    )
    epoch = dict(num_train_epochs=1, per_device_train_batch_size=options.batch_size, logging_steps=10**6)
    now = synchronised(options.device)

    def teacher_epoch() -> float:
        start = now()
        for batch in DataLoader(rows, batch_size=options.batch_size, collate_fn=default_data_collator):
            features = {name: value.to(options.device) for name, value in batch.items() if name != "labels"}
            teacher_forward(teacher, features, options)
        return now() - start

    def train_epoch(distillation: bool) -> float:
        losses = ALL_LOSSES if distillation else {}
        arguments = training_arguments(options, output_dir, distillation, **epoch, **losses)
        student = build_student(teacher)
        if distillation:
            trainer = DistillationTrainer(model=student, teacher_model=teacher, args=arguments, train_dataset=rows)
        else:
            trainer = Trainer(model=student, args=arguments, train_dataset=rows)
        start = now()
        trainer.train()
        return now() - start

    kinds = {
        "teacher_epoch": teacher_epoch,
        "plain_epoch": lambda: train_epoch(False),
        "kd_epoch": lambda: train_epoch(True),
    }
    seconds = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, run in kinds.items():
            seconds[name].append(run())
    fastest = {name: min(values) for name, values in seconds.items()}
    print(f"{describe(options)}, {options.batches} batches an epoch, fastest of {rounds}")
    for name, value in fastest.items():
        print(f"  {name:14s} {value:8.2f} s")
    ratio = fastest["kd_epoch"] / (fastest["teacher_epoch"] + fastest["plain_epoch"])
    print(f"real-loop ratio, all losses = kd_epoch / (teacher_epoch + plain_epoch) = {ratio:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
