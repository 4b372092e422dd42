"""P2: what the teacher-logits cache saves, measured in one run.

    P2  = one epoch of logit KD from the cache / one epoch of plain student fine-tuning      (target <= 1.10)
    P2' = one epoch of online logit KD (teacher run every step) / one epoch of logit KD from the cache

on the packaged MiniLM teacher (6L-384H) and a TinyBERT4 student (4L-312H), movie-review training snippets with
dynamic padding, batch 32. Every epoch is a real `trainer.train()` from the same student initialisation; the three
kinds run in turn, round after round, and the fastest epoch of each kind is compared (the cache is built once,
before the first round, and its build time is printed apart).

    python benchmarks/cached_epoch.py [--examples 2048] [--rounds 2] [--top_k 64] [--threads 2]
"""

import argparse
import copy
import tempfile
import time

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from nlpkd import DistillationArguments, DistillationTrainer, make_student
from nlpkd.assets import minilm_path
from nlpkd.classification import tokenize
from nlpkd.data import load_classification_data

COMMON = dict(
    num_train_epochs=1,
    per_device_train_batch_size=32,
    learning_rate=2e-4,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    use_cpu=True,
    seed=0,
)


def epoch_seconds(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_classification_data()
    train = tokenize(data, tokenizer, 128)["train"].select(range(options.examples))
    collator = DataCollatorWithPadding(tokenizer)
    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    student = make_student(teacher)  # every epoch starts from a copy of this one

    with tempfile.TemporaryDirectory() as output_dir, tempfile.TemporaryDirectory() as cache_dir:
        logit_kd = dict(COMMON, output_dir=output_dir, hidden_weight=0.0, attention_weight=0.0)

        def plain() -> Trainer:
            args = TrainingArguments(**COMMON, output_dir=output_dir)
            return Trainer(model=copy.deepcopy(student), args=args, train_dataset=train, data_collator=collator)

        def distillation(**cache) -> DistillationTrainer:
            args = DistillationArguments(**logit_kd, **cache)
            return DistillationTrainer(
                model=copy.deepcopy(student),
                teacher_model=teacher,
                args=args,
                train_dataset=train,
                data_collator=collator,
            )

        cached = dict(teacher_logits_cache_dir=cache_dir, teacher_logits_top_k=options.top_k)
        start = time.perf_counter()
        distillation(**cached)  # builds the cache: one teacher pass over the training set
        build_seconds = time.perf_counter() - start
        kinds = {
            "plain_epoch": plain,
            "cached_kd_epoch": lambda: distillation(**cached),
            "online_kd_epoch": distillation,
        }
        seconds = {name: [] for name in kinds}
        for _ in range(options.rounds):
            for name, make_trainer in kinds.items():
                seconds[name].append(epoch_seconds(make_trainer()))

    best = {name: min(values) for name, values in seconds.items()}
    print(
        f"{options.examples} movie-review snippets, batch 32, dynamic padding, {options.threads} threads, "
        f"top-{options.top_k} logits cached"
    )
    print(f"  cache build (one teacher pass) {build_seconds:8.1f} s")
    for name, value in best.items():
        print(f"  {name:30s} {value:8.1f} s (fastest of {options.rounds})")
    print(f"P2 cached KD epoch / plain epoch  = {best['cached_kd_epoch'] / best['plain_epoch']:.3f}  (target <= 1.10)")
    print(f"P2 online KD epoch / cached epoch = {best['online_kd_epoch'] / best['cached_kd_epoch']:.3f}")


if __name__ == "__main__":
    main()
