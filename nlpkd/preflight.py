"""Checks run when a DistillationTrainer is built: a teacher–student mismatch fails before training starts."""

import logging

from transformers import PreTrainedModel

from .arguments import DistillationArguments
from .layer_map import resolve_layer_map
from .positions import is_bare_model

logger = logging.getLogger(__name__)


def head_type(model: PreTrainedModel) -> str:
    """The task head a model class carries: `BertForSequenceClassification` -> `ForSequenceClassification`."""
    name = type(model).__name__
    if "For" in name:
        return name[name.index("For") :]
    return "LMHeadModel" if name.endswith("LMHeadModel") else "(no task head)"


# Config fields that name token ids the tokenizer decides: equal vocab sizes can still hide different tokenizers.
SPECIAL_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")


def check_same_tokenizer(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Refuse a pair whose configs name different special-token ids; warn when only the model types differ.

    Both models read the same input_ids, so a BERT teacher (pad 0) and a RoBERTa student (pad 1, bos 0, eos 2) with
    vocabularies of the same size would distil without an error while every id means something else to each.
    """
    t_config, s_config = teacher.config, student.config
    t_type, s_type = t_config.model_type, s_config.model_type
    differing = [
        f"{name} teacher {t_id} vs student {s_id}"
        for name in SPECIAL_TOKEN_IDS
        if (t_id := getattr(t_config, name, None)) is not None
        and (s_id := getattr(s_config, name, None)) is not None
        and t_id != s_id
    ]
    if differing:
        raise ValueError(
            f"The teacher ({t_type}) and the student ({s_type}) use different special tokens: {'; '.join(differing)}. "
            "Both read the same input_ids, so they need the same tokenizer; build the student with "
            "nlpkd.make_student(teacher), or load a student pre-trained with the teacher's tokenizer."
        )
    if t_type != s_type:
        logger.warning(
            "The teacher is a %s and the student a %s, with their own position schemes (max positions %s vs %s). Both "
            "read the teacher's input_ids: make sure the student was pre-trained with the teacher's tokenizer (equal "
            "vocabulary sizes and special-token ids do not prove it).",
            t_type,
            s_type,
            getattr(t_config, "max_position_embeddings", None),
            getattr(s_config, "max_position_embeddings", None),
        )


def check_tokenizer_fits(tokenizer, teacher: PreTrainedModel) -> None:
    """Refuse a tokenizer (the trainer's `processing_class`) with more token ids than the teacher has embeddings for:
    the first text with such an id would fail deep inside the embedding lookup ("index out of range in self")."""
    if tokenizer is None or not hasattr(tokenizer, "convert_tokens_to_ids"):
        return
    rows = teacher.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer (processing_class) has {len(tokenizer)} tokens, but the teacher's input embeddings have "
            f"{rows} rows: its ids {rows} and up cannot be read. Pass the teacher's own tokenizer "
            "(AutoTokenizer.from_pretrained of the teacher's path)."
        )


def check_encoder_decoder(teacher: PreTrainedModel, student: PreTrainedModel, expected: bool) -> None:
    """Refuse a pair this trainer cannot distil: encoder-decoders go to the seq2seq trainer, others to the plain."""
    for role, model in (("teacher", teacher), ("student", student)):
        if bool(getattr(model.config, "is_encoder_decoder", False)) != expected:
            trainer = "DistillationTrainer" if expected else "Seq2SeqDistillationTrainer"
            kind = "is not an encoder-decoder" if expected else "is an encoder-decoder"
            raise ValueError(
                f"The {role} {type(model).__name__} {kind}: distil it with nlpkd.{trainer} (and its arguments class)."
            )


def _is_default_label_names(id2label: dict) -> bool:
    return all(str(label) == f"LABEL_{i}" for i, label in id2label.items())


def check_teacher_student(
    teacher: PreTrainedModel, student: PreTrainedModel, args: DistillationArguments
) -> list[int]:
    """Validate the pair against `args`; return the resolved layer map (student layer m -> teacher layer)."""
    check_encoder_decoder(teacher, student, expected=False)
    t_config, s_config = teacher.config, student.config
    if is_bare_model(student):
        for name in ("hard_label_weight", "logit_weight"):
            if getattr(args, name) > 0:
                raise ValueError(
                    f"{name}={getattr(args, name)}, but the student {type(student).__name__} is a bare model with no "
                    "task head, so it has no labels loss and no logits. For general distillation set "
                    "hard_label_weight=0 and logit_weight=0 and use hidden_weight/attention_weight; otherwise load "
                    "the student with a task head (e.g. AutoModelForMaskedLM)."
                )
    if args.logit_weight > 0 and head_type(teacher) != head_type(student):
        raise ValueError(
            f"Logit distillation needs the same task head on both models: teacher {type(teacher).__name__} "
            f"{head_type(teacher)} vs student {type(student).__name__} {head_type(student)}. Load both with the "
            "same Auto class, or set logit_weight=0."
        )
    t_vocab, s_vocab = getattr(t_config, "vocab_size", None), getattr(s_config, "vocab_size", None)
    if t_vocab != s_vocab:
        raise ValueError(
            f"vocab_size differs: teacher {t_vocab} vs student {s_vocab}. Both read the same input_ids, so they "
            "need the same tokenizer; build the student with nlpkd.make_student(teacher) or the teacher's vocab."
        )
    check_same_tokenizer(teacher, student)
    if head_type(teacher) == "ForSequenceClassification":
        if t_config.num_labels != s_config.num_labels:
            raise ValueError(
                f"num_labels differs: teacher {t_config.num_labels} vs student {s_config.num_labels}. "
                "Load the student with num_labels equal to the teacher's."
            )
        t_labels, s_labels = dict(t_config.id2label), dict(s_config.id2label)
        if t_labels != s_labels and not (_is_default_label_names(t_labels) or _is_default_label_names(s_labels)):
            raise ValueError(
                f"id2label differs: teacher {t_labels} vs student {s_labels}. Logit distillation compares class i "
                "with class i; give the student the teacher's id2label/label2id."
            )
    layer_map = []
    if args.hidden_weight > 0 or args.attention_weight > 0:
        layer_map = resolve_layer_map(args.layer_map, s_config.num_hidden_layers, t_config.num_hidden_layers)
    elif args.layer_map is not None:
        logger.warning("layer_map=%s is unused: hidden_weight and attention_weight are both 0.", args.layer_map)
    if args.attention_weight > 0 and args.attention_loss == "mse":
        if t_config.num_attention_heads != s_config.num_attention_heads:
            raise ValueError(
                f"attention_loss='mse' compares scores head by head, but num_attention_heads differs: teacher "
                f"{t_config.num_attention_heads} vs student {s_config.num_attention_heads}. Use a student with "
                f"{t_config.num_attention_heads} heads, or attention_loss='kl' (compares head-averaged maps)."
            )
    architectures = getattr(t_config, "architectures", None) or []
    if args.logit_weight > 0 and architectures and type(teacher).__name__ not in architectures:
        logger.warning(
            "The teacher %s was loaded from a checkpoint of %s: its task head is freshly initialised and untrained, "
            "so its logits teach nothing. Fine-tune the teacher first.",
            type(teacher).__name__,
            architectures,
        )
    return layer_map


def check_seq2seq_pair(teacher: PreTrainedModel, student: PreTrainedModel, args) -> dict[str, list[int]]:
    """Validate an encoder-decoder pair against `args`; return the resolved `encoder` and `decoder` layer maps."""
    from .terms import num_stack_layers, stack_heads

    check_encoder_decoder(teacher, student, expected=True)
    if args.logit_weight > 0 and type(teacher).__name__ != type(student).__name__:
        logger.warning(
            "Teacher %s and student %s are different classes; word-level KD compares their target vocabularies "
            "position by position.",
            type(teacher).__name__,
            type(student).__name__,
        )
    sizes = {
        "source": [model.get_encoder().get_input_embeddings().weight.shape[0] for model in (teacher, student)],
        "target": [model.get_output_embeddings().weight.shape[0] for model in (teacher, student)],
    }
    for part, (t_size, s_size) in sizes.items():
        if t_size != s_size:
            raise ValueError(
                f"The {part} vocabularies differ: teacher {t_size} vs student {s_size} tokens. Both read the same "
                "input_ids and labels, so they need the same tokenizers; build the student with "
                "nlpkd.make_student(teacher)."
            )
    check_same_tokenizer(teacher, student)
    maps = {}
    for stack in ("encoder", "decoder"):
        requested = getattr(args, f"{stack}_layer_map")
        stack_weight = getattr(args, f"{stack}_weight")
        if stack == "decoder":
            stack_weight = max(stack_weight, args.cross_attention_weight)
        if (args.hidden_weight > 0 or args.attention_weight > 0) and stack_weight > 0:
            try:
                maps[stack] = resolve_layer_map(
                    requested, num_stack_layers(student, stack), num_stack_layers(teacher, stack)
                )
            except ValueError as error:
                raise ValueError(f"{stack}_layer_map: {error}") from None
    if args.attention_weight > 0 and args.attention_loss == "mse":
        for stack in maps:
            t_heads, s_heads = stack_heads(teacher, stack), stack_heads(student, stack)
            if t_heads != s_heads:
                raise ValueError(
                    f"attention_loss='mse' compares scores head by head, but the {stack} head counts differ: teacher "
                    f"{t_heads} vs student {s_heads}. Use a student with {t_heads} {stack} heads, or "
                    "attention_loss='kl' (compares head-averaged maps)."
                )
    return maps
