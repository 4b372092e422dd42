"""The translation recipe that recipes/translation.py runs (its docstring shows the commands): its arguments and
defaults, its sentence pairs, and its stages from the teacher to results.json and the model card."""

import copy
import logging
import os
import time
from dataclasses import dataclass, field, replace

import datasets
from transformers import AutoTokenizer, EncoderDecoderModel, set_seed

from nlpkd import Seq2SeqDistillationArguments, Seq2SeqDistillationTrainer
from nlpkd.cli import parse_recipe_args
from nlpkd.fingerprint import fingerprint
from nlpkd.hub import TARGET_TOKENIZER_DIR
from nlpkd.pipeline import (
    build_student,
    dataset_card,
    distil_and_train_baseline,
    distillation_settings,
    publish_student,
    report_results,
    train_runtime,
)
from nlpkd.pseudo_targets import teacher_hypotheses
from nlpkd.recipe_args import StudentArguments, TeacherArguments, check_length_limit, check_sample_limits
from nlpkd.report import count_parameters, generation_timer, measure_speed, median_length_text, model_size_mb
from nlpkd.target_checks import SELECTIONS, TargetChecks, select_targets
from nlpkd.teacher_stage import finetune_teacher_once, trained_teacher
from nlpkd.translation import (
    Seq2SeqCollator,
    build_encoder_decoder,
    check_coverage,
    check_languages,
    load_encoder_decoder,
    load_translation_pairs,
    score_translations,
    tokenize_pairs,
    train_target_tokenizer,
    translate,
)

logger = logging.getLogger(__name__)

EMBEDDED_DATA = "English–Spanish Bible verse pairs (World English Bible, Reina-Valera 1909; public domain)"

# The held-out splits the models can be scored on (load_translation_pairs makes both).
EVAL_SPLITS = ("test", "validation")
# Marian checkpoints (Helsinki-NLP/opus-mt-*) are `MarianMTModel`s, SeamlessM4T's text model `...ForTextToText`.
SEQ2SEQ_ARCHITECTURES = ("ForConditionalGeneration", "EncoderDecoderModel", "MTModel", "ForTextToText")
# Teacher-only training settings of the embedded default's from-scratch decoder.
TEACHER_TRAINING = dict(
    label_smoothing_factor=0.1,
    warmup_steps=0.05,
    weight_decay=0.01,
    train_sampling_strategy="group_by_length",
    save_strategy="steps",
    save_steps=300,
    save_total_limit=1,
)


# The embedded default's settings; a config file or flags override them.
DEFAULTS = dict(
    output_dir=os.path.join("outputs", "translation"),
    # The first 10,000 training pairs: the teacher's 4 beam-4 hypotheses of each took 8 minutes on 2 cores and the
    # student's three epochs 24 more (2026-12-01), inside the 60-minute budget for both.
    max_train_samples=10000,
    # Word-level KD (T = 1) plus the student's own loss, both on the teacher's beam-search translations.
    temperature=1.0,
    hard_label_weight=0.5,
    logit_weight=0.5,
    hidden_weight=0.0,
    attention_weight=0.0,
    # Three epochs over the references and the teacher's checked translations: on the validation verses the
    # student's greedy BLEU rose with every epoch (17.1, 18.2, 19.9) and ended 1.1 above a two-epoch schedule's 18.8
    # (docs/translation.md, one seed); one epoch left the student well short of the teacher.
    num_train_epochs=3,
    learning_rate=2e-4,
    warmup_steps=0.05,
    weight_decay=0.01,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    train_sampling_strategy="group_by_length",
    eval_strategy="no",
    save_strategy="steps",
    save_steps=500,
    save_total_limit=1,
    logging_steps=50,
    report_to="none",
    disable_tqdm=False,  # progress bars and the long stages' progress lines; --disable_tqdm true quiets both
    generation_num_beams=4,
    generation_max_length=128,
    # The teacher: the MiniLM encoder with a new 3-layer decoder, trained once: the decoder alone (35 minutes on 2
    # CPU cores, BLEU 11.7) ...
    teacher_num_train_epochs=3.0,
    teacher_learning_rate=5e-4,
    # ... then the whole teacher, encoder unfrozen, at a tenth of that rate (43 minutes, BLEU 20.4).
    teacher_encoder_epochs=2.0,
    teacher_encoder_learning_rate=5e-5,
    # The student: half the encoder, one decoder layer (a deep encoder and a shallow decoder decode fast), the
    # teacher's width, started from the teacher's uniformly mapped layers.
    student_num_layers=3,
    student_decoder_layers=1,
    student_hidden_size=384,
    student_num_heads=12,
    student_intermediate_size=1536,
    student_init="teacher_layers",
)


@dataclass
class TranslationDataArguments:
    source_lang: str = field(default="en", metadata={"help": "Source language code (a column or translation key)."})
    target_lang: str = field(default="es", metadata={"help": "Target language code."})
    dataset_name: str | None = field(default=None, metadata={"help": "A hub translation dataset or local folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local .tsv/.csv/.json/.jsonl pairs with one column per language code."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation pairs."})
    test_file: str | None = field(default=None, metadata={"help": "Local test pairs."})
    validation_size: int = field(default=500, metadata={"help": "Pairs cut from train when there is no validation."})
    test_size: int = field(default=1000, metadata={"help": "Pairs cut from train when there is no test split."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the held-out splits (apart from --seed)."})
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source, e.g. 'translate English to Spanish: ' for T5."}
    )
    max_source_length: int = field(default=128, metadata={"help": "Source tokens kept per pair."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept per pair."})
    target_vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary of the SentencePiece target tokenizer trained for a new decoder."}
    )
    teacher_decoder_layers: int = field(
        default=3, metadata={"help": "Layers of the decoder a new encoder-decoder teacher gets."}
    )
    teacher_freeze_encoder: bool = field(
        default=True,
        metadata={
            "help": "Train the decoder of a new encoder-decoder teacher first, the pretrained encoder frozen "
            "(fine-tuning MiniLM at the new decoder's learning rate from the start collapsed its outputs here); "
            "teacher_encoder_epochs then trains the whole teacher."
        },
    )
    teacher_encoder_epochs: float = field(
        default=0.0,
        metadata={
            "help": "With teacher_freeze_encoder: once the decoder has learned, train the whole teacher (encoder "
            "unfrozen) this many more epochs at teacher_encoder_learning_rate. Cached as a teacher of its own."
        },
    )
    teacher_encoder_learning_rate: float = field(
        default=5e-5, metadata={"help": "Learning rate of the whole-teacher stage (teacher_encoder_epochs)."}
    )
    tokenizer_cache_dir: str = field(
        default="outputs/tokenizers", metadata={"help": "Where trained target tokenizers are kept for reuse."}
    )
    sequence_level_kd: bool = field(
        default=True, metadata={"help": "Train the student on the teacher's beam-search translations (Kim & Rush)."}
    )
    mix_references: bool = field(
        default=True, metadata={"help": "With sequence_level_kd: train on the references and the teacher's outputs."}
    )
    pseudo_target_cache_dir: str = field(
        default="outputs/pseudo_targets", metadata={"help": "Where the teacher's translations are kept for reuse."}
    )
    pseudo_target_no_repeat_ngram_size: int = field(
        default=4,
        metadata={
            "help": "The teacher's beam search never repeats an n-gram of this many target tokens (0: off), which "
            "stops the loops a small teacher falls into. Part of the translations' cache key."
        },
    )
    pseudo_target_repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "generate's repetition_penalty for the teacher's translations (1.0: off); cache key."},
    )
    pseudo_target_max_length_ratio: float = field(
        default=2.0,
        metadata={
            "help": "A batch of teacher translations stops after this many target tokens per source token of its "
            "longest source, + 10. In the cache key."
        },
    )
    pseudo_target_hypotheses: int | None = field(
        default=None,
        metadata={
            "help": "Hypotheses the teacher's beam search returns per source, the candidates the targets are chosen "
            "from (default: all generation_num_beams of them). In the cache key."
        },
    )
    pseudo_targets_per_source: int = field(
        default=1, metadata={"help": "Training targets kept per source from its clean hypotheses (n-best)."}
    )
    pseudo_target_selection: str = field(
        default="closest",
        metadata={
            "help": "Which clean hypotheses become targets: 'top' (the teacher's best) or 'closest' (those nearest "
            "the reference by n-gram overlap: Kim & Rush's sequence-level interpolation).",
            "choices": list(SELECTIONS),
        },
    )
    pseudo_target_checks: bool = field(
        default=True,
        metadata={
            "help": "Drop teacher translations that did not finish, repeat an n-gram more often than 99 % of the "
            "references do, or have a length ratio outside the references' middle 99 % (nlpkd.target_checks)."
        },
    )
    student_num_beams: int = field(
        default=1,
        metadata={
            "help": "Beams the student and the baseline decode with in results.json and the speed-up (1: greedy; "
            "a sequence-level KD student loses little without beam search). The teacher decodes with "
            "generation_num_beams, and the student is also scored with it."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Distil on at most this many pairs."})
    eval_split: str = field(
        default="test",
        metadata={
            "help": "The held-out pairs the models are scored on: 'test', or 'validation' to choose settings "
            "without looking at the test pairs.",
            "choices": list(EVAL_SPLITS),
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Score at most this many eval_split pairs."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the BLEU/chrF intervals."})

    def __post_init__(self):
        check_sample_limits(self)
        for name in ("pseudo_target_hypotheses", "pseudo_targets_per_source", "student_num_beams"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: it must be at least 1.")


def main(argv: list[str] | None = None) -> dict:
    types = (TranslationDataArguments, TeacherArguments, StudentArguments, Seq2SeqDistillationArguments)
    data_args, teacher_args, student_args, args = parse_recipe_args(types, DEFAULTS, argv)
    check_pseudo_target_settings(data_args, args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    for length_field in ("max_source_length", "max_target_length"):  # the encoders read one, the decoders the other
        check_length_limit(length_field, getattr(data_args, length_field), teacher_args, student_args)
    # The long stages outside the Trainer log their progress (nlpkd.progress) where its bar would show.
    show_progress = not args.disable_tqdm and args.should_log
    # Under several processes the main one fills the datasets cache first; the others read it.
    with args.main_process_first(desc="loading the pairs"):
        pairs = load_pairs(data_args, show_progress)
    logger.info("Pairs: %s", {split: len(rows) for split, rows in pairs.items()})

    # Stage 1: the teacher (trained once when it is not a translation model yet, then reused).
    teacher, source_tokenizer, target_tokenizer = prepare_teacher(data_args, teacher_args, args, pairs)
    check_coverage(target_tokenizer, pairs["train"]["target"][:200], "target")
    lengths = (data_args.max_source_length, data_args.max_target_length)
    train = pairs["train"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    references = tokenize_pairs(train, source_tokenizer, target_tokenizer, *lengths, data_args.source_prefix)
    held_out = pairs[data_args.eval_split]
    if data_args.max_eval_samples is not None:
        held_out = held_out.select(range(min(data_args.max_eval_samples, len(held_out))))

    # Stage 2: sequence-level KD data, the teacher's translations of the training sources (generated once), checked.
    student_train, wall_seconds, target_report = references, {}, None
    if data_args.sequence_level_kd:
        started = time.perf_counter()
        # The main process translates and caches; the others wait (raise --ddp_timeout for a long translation) and
        # load its cache, so that every process trains on the same targets.
        with args.main_process_first(desc="translating the training sources with the teacher"):
            translated, target_report = sequence_level_targets(
                teacher, references, data_args, args, target_tokenizer.pad_token_id, show_progress
            )
        wall_seconds["sequence_level_data"] = time.perf_counter() - started
        logger.info("Sequence-level targets: %s", target_report)
        student_train = (
            datasets.concatenate_datasets([references, translated]) if data_args.mix_references else translated
        )

    # Stage 3: distil the student; then the baseline, the same student trained on the references alone.
    set_seed(args.seed)
    student = build_student(teacher, student_args, type(teacher))
    student.generation_config.num_beams = data_args.student_num_beams  # the decoding it is measured with, saved
    baseline = None if student_args.no_baseline else copy.deepcopy(student)
    collator = Seq2SeqCollator(
        source_tokenizer, teacher.generation_config.decoder_start_token_id, target_tokenizer.pad_token_id
    )
    # Next to the student, so that its folder (and a push during training) holds both of its tokenizers.
    if args.should_save:
        target_tokenizer.save_pretrained(os.path.join(args.output_dir, TARGET_TOKENIZER_DIR))
    trainer = distil_and_train_baseline(
        student,
        baseline,
        teacher,
        args,
        student_train,
        None,
        source_tokenizer,
        collator,
        trainer_class=Seq2SeqDistillationTrainer,
        baseline_train_dataset=references,
    )

    # Stage 4 measures the models and writes results.json on the main process alone; the others are done.
    if not trainer.is_world_process_zero():
        return {}

    # Stage 4: BLEU and chrF on the held-out pairs (eval_split), size and latency for each model and decoding.
    sources = [data_args.source_prefix + text for text in held_out["source"]]
    typical = median_length_text(sources)
    teacher_beams = args.generation_num_beams or 1
    decodings = evaluated_decodings(
        teacher, trainer.student, baseline, teacher_beams, data_args.student_num_beams, data_args.max_target_length
    )
    # The models are timed in turns, and the speed-up is the median of the per-round ratios.
    timers = {
        name: generation_timer(model, source_tokenizer, typical, **kwargs)
        for name, (model, kwargs) in decodings.items()
    }
    speed, speed_rounds = measure_speed(timers, show_progress=not args.disable_tqdm)
    results = {}
    for name, (model, kwargs) in decodings.items():
        started = time.perf_counter()
        translations = translate(
            model,
            source_tokenizer,
            target_tokenizer,
            sources,
            max_length_ratio=2.0,
            show_progress=show_progress,
            description=f"{name}: translating the {data_args.eval_split} sources",
            **kwargs,
        )
        wall_seconds[f"{data_args.eval_split}_translations_{name}"] = time.perf_counter() - started
        results[name] = {
            **score_translations(translations, held_out["target"], data_args.n_bootstrap),
            "decoding": decoding_name(kwargs["num_beams"]),
            "params": count_parameters(model),
            "size_mb": model_size_mb(model),
            **speed[name],
            "examples": translations[:3],
        }
        logger.info("%s: BLEU %.2f chrF %.2f", name, results[name]["bleu"], results[name]["chrf"])
    # A teacher scoring BLEU 0 (e.g. a short run) has no retention to report, and must not crash the run here.
    teacher_bleu = results["teacher"]["bleu"]
    results["retention"] = results["student"]["bleu"] / teacher_bleu if teacher_bleu > 0 else None
    results["speedup"] = results["student"]["speedup_b1"]
    results["speedup_decoding"] = (
        f"student {results['student']['decoding']} against teacher {results['teacher']['decoding']}, batch 1"
    )
    if target_report is not None:
        results["sequence_level_targets"] = target_report
    results["wall_seconds"] = {
        **wall_seconds,
        "student_training": train_runtime(trainer),
        "baseline_training": getattr(trainer, "baseline_train_runtime", None),
    }
    results["speed_rounds"] = speed_rounds
    results["eval_split"] = data_args.eval_split
    results["num_test_pairs"] = len(held_out)  # the scored pairs, of eval_split
    results["sequence_level_kd"] = data_args.sequence_level_kd
    results["distillation"] = distillation_settings(args, trainer.layer_map)
    report_results(results, args.output_dir)
    kd = training_targets(data_args, target_report)
    publish_student(
        trainer,
        results,
        "recipes/translation.py",
        argv,
        teacher,
        teacher_args,
        student_args,
        tasks="translation",
        language=[data_args.source_lang, data_args.target_lang],
        eval_split=data_args.eval_split,
        setup={
            "training targets": kd,
            "decoding": f"{results['speedup_decoding']}: the speed-up and the student's scores; "
            f"`generate(num_beams={data_args.student_num_beams})` is the student's default",
        },
        **dataset_card(data_args.dataset_name, data_args.dataset_config_name, data_args.train_file, EMBEDDED_DATA),
    )
    return results


def check_pseudo_target_settings(data_args, args) -> None:
    """The sequence-level settings that depend on the training arguments, resolved (pseudo_target_hypotheses None
    -> generation_num_beams) and checked before anything is trained."""
    beams = args.generation_num_beams or 1
    if data_args.pseudo_target_hypotheses is None:
        data_args.pseudo_target_hypotheses = beams
    if data_args.pseudo_target_hypotheses > beams:
        raise ValueError(
            f"pseudo_target_hypotheses={data_args.pseudo_target_hypotheses} is more than the generation_num_beams="
            f"{beams} the teacher's beam search keeps: raise --generation_num_beams or lower "
            "--pseudo_target_hypotheses."
        )
    if data_args.pseudo_targets_per_source > data_args.pseudo_target_hypotheses:
        raise ValueError(
            f"pseudo_targets_per_source={data_args.pseudo_targets_per_source} is more than the "
            f"{data_args.pseudo_target_hypotheses} hypotheses per source they are chosen from "
            "(pseudo_target_hypotheses): raise it (and --generation_num_beams) or lower pseudo_targets_per_source."
        )


def sequence_level_targets(teacher, references, data_args, args, pad_token_id: int, show_progress: bool):
    """The teacher's translations of the training sources (`nlpkd.pseudo_targets`, cached) and the targets chosen
    from them (`nlpkd.target_checks`): (rows to train on, the report of what was kept and dropped)."""
    hypotheses = teacher_hypotheses(
        teacher,
        references,
        data_args.pseudo_target_cache_dir,
        pad_token_id,
        num_beams=args.generation_num_beams or 1,
        max_new_tokens=data_args.max_target_length,
        max_length_ratio=data_args.pseudo_target_max_length_ratio,
        num_return_sequences=data_args.pseudo_target_hypotheses,
        show_progress=show_progress,
        no_repeat_ngram_size=data_args.pseudo_target_no_repeat_ngram_size or None,
        repetition_penalty=None
        if data_args.pseudo_target_repetition_penalty == 1.0
        else data_args.pseudo_target_repetition_penalty,
    )
    checks = None
    if data_args.pseudo_target_checks:
        eos = teacher.generation_config.eos_token_id
        checks = TargetChecks.from_references(references["input_ids"], references["labels"], eos)
    return select_targets(
        references,
        hypotheses,
        checks,
        per_source=data_args.pseudo_targets_per_source,
        selection=data_args.pseudo_target_selection,
        fallback_to_reference=not data_args.mix_references,
    )


def training_targets(data_args, target_report: dict | None) -> str:
    """The model card's line on what the student learned from."""
    if not data_args.sequence_level_kd:
        return "word-level KD on the references only"
    report = target_report or {}
    line = (
        f"sequence-level: the teacher's {data_args.pseudo_target_hypotheses} best beam-search translations of each "
        f"of {report.get('sources')} training sources"
    )
    if data_args.pseudo_target_no_repeat_ngram_size:
        line += f" (no repeated {data_args.pseudo_target_no_repeat_ngram_size}-gram)"
    if data_args.pseudo_target_checks:
        line += (
            f", checked against bounds read off the references ({report.get('sources_without_clean_target')} "
            "sources had no clean hypothesis)"
        )
    line += f"; {report.get('targets')} targets kept, the {data_args.pseudo_target_selection} clean ones"
    if data_args.mix_references:
        line += ", mixed with the references"
    return line


def evaluated_decodings(teacher, student, baseline, teacher_beams: int, student_beams: int, max_new_tokens: int):
    """name -> (model, generate kwargs) of every measured model and decoding: the teacher with `teacher_beams`, the
    student and the baseline with `student_beams`, and the student with the other of greedy / `teacher_beams` too
    (as "student_<decoding>"), so that results.json shows what its decoding costs and gains."""
    decodings = {
        "teacher": (teacher, teacher_beams),
        "student": (student, student_beams),
        "baseline": (baseline, student_beams),
    }
    other = teacher_beams if student_beams == 1 else 1
    if other != student_beams:
        decodings[f"student_{decoding_name(other).replace(' ', '')}"] = (student, other)
    return {
        name: (model, dict(num_beams=beams, max_new_tokens=max_new_tokens))
        for name, (model, beams) in decodings.items()
        if model is not None
    }


def decoding_name(num_beams: int) -> str:
    return "greedy" if num_beams == 1 else f"beam {num_beams}"


def prepare_teacher(data_args, teacher_args, args, pairs):
    """Stage 1 (`nlpkd.teacher_stage`): the teacher and its (source, target) tokenizers. A translation (seq2seq)
    checkpoint is used as it is; any other becomes the encoder of a new encoder-decoder, trained once on the training
    pairs and kept. There is no --finetune_teacher here: the recipe trains no existing translation model."""
    return trained_teacher(
        teacher_args.teacher_path,
        SEQ2SEQ_ARCHITECTURES,
        load=lambda teacher_path: translation_model(data_args, pairs, teacher_path),
        finetune=lambda: new_encoder_decoder(data_args, teacher_args, args, pairs),
    )


def translation_model(data_args, pairs, teacher_path: str):
    """A seq2seq checkpoint as it is, with its own tokenizer on both sides, checked against the languages and the
    training sources."""
    from transformers import AutoModelForSeq2SeqLM

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    check_languages(teacher_path, tokenizer, source=data_args.source_lang, target=data_args.target_lang)
    check_coverage(tokenizer, pairs["train"]["source"][:200], "source")
    return AutoModelForSeq2SeqLM.from_pretrained(teacher_path), tokenizer, tokenizer


def new_encoder_decoder(data_args, teacher_args, args, pairs):
    """The checkpoint's encoder with a new decoder writing a SentencePiece vocabulary trained on the targets; the
    decoder is trained first (the encoder frozen), then, with teacher_encoder_epochs, the whole teacher. Each stage is
    trained once and kept under teacher_cache_dir."""
    teacher_path = teacher_args.teacher_path
    source_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    check_coverage(source_tokenizer, pairs["train"]["source"][:200], "source")
    with args.main_process_first(desc="training the target tokenizer"):  # trained once, by the main process
        target_tokenizer = target_tokenizer_once(data_args, pairs["train"]["target"])
    tokenized = tokenize_pairs(
        pairs["train"],
        source_tokenizer,
        target_tokenizer,
        data_args.max_source_length,
        data_args.max_target_length,
        data_args.source_prefix,
    )
    collator = Seq2SeqCollator(source_tokenizer, target_tokenizer.bos_token_id, target_tokenizer.pad_token_id)
    key = (
        "translation",
        data_args.source_lang,
        data_args.target_lang,
        fingerprint(pairs["train"]["source"], pairs["train"]["target"]),
        data_args.max_source_length,
        data_args.max_target_length,
        data_args.target_vocab_size,
        data_args.teacher_decoder_layers,
        data_args.teacher_freeze_encoder,
        *([data_args.source_prefix] if data_args.source_prefix else []),  # (keeps earlier cache keys valid)
    )

    def decoder_stage():
        return finetune_teacher_once(
            EncoderDecoderModel,
            teacher_path,
            key,
            teacher_args,
            args,
            tokenized,
            collator,
            source_tokenizer,
            build=lambda: build_encoder_decoder(
                teacher_path,
                target_tokenizer,
                data_args.teacher_decoder_layers,
                teacher_args.teacher_seed,
                freeze_encoder=data_args.teacher_freeze_encoder,
            ),
            training_changes=TEACHER_TRAINING,
            load=load_encoder_decoder,
        )

    if not (data_args.teacher_freeze_encoder and data_args.teacher_encoder_epochs > 0):
        return decoder_stage(), source_tokenizer, target_tokenizer
    # The whole teacher, started from the trained decoder stage (built only when this stage is not cached yet):
    # with a decoder that already reads its source, the encoder can move at a low rate without collapsing.
    whole_stage = replace(
        teacher_args,
        teacher_num_train_epochs=data_args.teacher_encoder_epochs,
        teacher_learning_rate=data_args.teacher_encoder_learning_rate,
    )
    teacher = finetune_teacher_once(
        EncoderDecoderModel,
        teacher_path,
        (*key, "whole teacher after", teacher_args.teacher_num_train_epochs, teacher_args.teacher_learning_rate),
        whole_stage,
        args,
        tokenized,
        collator,
        source_tokenizer,
        build=lambda: decoder_stage().requires_grad_(True),
        training_changes=TEACHER_TRAINING,
        load=load_encoder_decoder,
    )
    return teacher, source_tokenizer, target_tokenizer


def target_tokenizer_once(data_args, texts):
    """A SentencePiece tokenizer trained on the training targets, kept under tokenizer_cache_dir by fingerprint."""
    key = fingerprint(data_args.target_lang, data_args.target_vocab_size, texts)
    directory = os.path.join(data_args.tokenizer_cache_dir, f"{data_args.target_lang}-{key}")
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        check_languages(directory, target=data_args.target_lang)
        return AutoTokenizer.from_pretrained(directory)
    logger.info("Training a %d-piece SentencePiece tokenizer on %d targets", data_args.target_vocab_size, len(texts))
    return train_target_tokenizer(texts, data_args.target_vocab_size, data_args.target_lang, directory)


def load_pairs(data_args, show_progress: bool = True):
    return load_translation_pairs(
        data_args.source_lang,
        data_args.target_lang,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        validation_size=data_args.validation_size,
        test_size=data_args.test_size,
        seed=data_args.split_seed,
        show_progress=show_progress,
    )
