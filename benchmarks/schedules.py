"""Does distillation help from the first epoch? Students of the classification recipe's teacher under each loss
schedule (and the no-KD baseline, the same student trained on the labels alone), over several seeds, on any data the
recipe reads: the recipe's flags go after `--` (e.g. `--num_train_epochs 2 --train_file tweets.csv`).

Each run writes `<output_dir>/schedules/<config>-seed<seed>.json` (validation and test accuracy and macro F1); the
summary (mean ± sample std over seeds) covers every result file in that folder, so runs launched as separate
processes are summarised together.

    python benchmarks/schedules.py --configs baseline constant two_phase --seeds 42 43 44 -- --num_train_epochs 2
    python benchmarks/schedules.py --configs                     # the teacher alone (kept for reuse)
    python benchmarks/schedules.py --summarise_only -- --output_dir outputs/text_classification
"""

import argparse
import os
import sys

from student_runs import SPLITS, distil, prepared_data, split_argv, summary, write_json

from nlpkd.classification import predict_labels
from nlpkd.recipes.text_classification import parse_args, prepare_teacher
from nlpkd.report import majority_class_rate

# Argument changes of each configuration over the recipe's settings (which train all four losses).
CONFIGS = {
    "baseline": dict(hard_label_weight=1.0, logit_weight=0.0, hidden_weight=0.0, attention_weight=0.0),
    "constant": dict(loss_schedule="constant"),
    "linear_decay": dict(loss_schedule="linear_decay"),
    "two_phase": dict(loss_schedule="two_phase"),
    "logits": dict(hidden_weight=0.0, attention_weight=0.0),
    "logits_t1": dict(hidden_weight=0.0, attention_weight=0.0, temperature=1.0),
    "layers_0.1": dict(hidden_weight=0.1, attention_weight=0.1),
    "hidden_only": dict(attention_weight=0.0),
    "attention_only": dict(hidden_weight=0.0),
    "attention_kl": dict(attention_loss="kl"),
    "no_clipping": dict(max_grad_norm=0.0),
}
KEYS = ("validation", "test", "test_f1")


def main(argv: list[str]) -> None:
    own, recipe_argv = split_argv(argv)
    options = benchmark_options(own)
    data_args, teacher_args, student_args, *_, args = parse_args(recipe_argv)
    folder = os.path.join(args.output_dir, "schedules")
    if options.summarise_only:
        print(summary(folder, KEYS))
        return
    data, tokenizer, tokenized = prepared_data(data_args, teacher_args)
    teacher = prepare_teacher(teacher_args, data, tokenized, tokenizer, args, data_args.max_seq_length)
    os.makedirs(folder, exist_ok=True)
    models = {}
    for split in SPLITS:
        predictions = predict_labels(teacher, tokenized[split], tokenizer)
        labels = tokenized[split]["label"]
        models.setdefault("teacher", {})[split] = float((predictions == labels).mean())
        models.setdefault("majority class", {})[split] = majority_class_rate(labels)
    write_json(os.path.join(folder, "models.json"), models)
    for config in options.configs:
        for seed in options.seeds:
            output_dir = os.path.join(folder, config)
            scores = distil([teacher], seed, student_args, args, tokenized, tokenizer, output_dir, **CONFIGS[config])
            write_json(os.path.join(folder, f"{config}-seed{seed}.json"), {"run": config, "seed": seed, **scores})
    print(summary(folder, KEYS))


def benchmark_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="What to train.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="Student seeds of each config.")
    parser.add_argument("--summarise_only", action="store_true", help="Print the table of the results written.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
