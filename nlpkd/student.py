"""Build a TinyBERT-style student from a teacher: same class and task head, fewer and narrower layers."""

import copy
import logging
from collections.abc import Iterable
from typing import Literal

from transformers import PreTrainedModel

from .capture import find_layers
from .layer_map import uniform_layer_map
from .pruning import prune_into, pruning_problem

STUDENT_INITS = ("random", "teacher_layers", "pruned", "auto")
# Config fields under other names: GPT-2 calls the FFN width n_inner, DistilBERT hidden_dim.
logger = logging.getLogger(__name__)

CONFIG_ALIASES = {"intermediate_size": ("intermediate_size", "n_inner", "hidden_dim")}


def make_student(
    teacher: PreTrainedModel,
    num_hidden_layers: int = 4,
    hidden_size: int = 312,
    num_attention_heads: int = 12,
    intermediate_size: int = 1200,
    init: Literal["random", "teacher_layers", "pruned", "auto"] = "random",
    num_decoder_layers: int | None = None,
    calibration_data: Iterable[dict] | None = None,
) -> PreTrainedModel:
    """A student of the teacher's own model class (task head, labels and vocabulary included).

    The defaults give TinyBERT4's shape (4 layers, 312 wide, 12 heads, 1200 FFN). For an encoder-decoder teacher
    (Marian, BART, T5, `EncoderDecoderModel`) `num_hidden_layers` is the encoder's depth and `num_decoder_layers`
    the decoder's (default: the same); width, heads and FFN apply to both stacks. `init="teacher_layers"` copies
    the teacher's embeddings, task head and, for student layer m of each stack, teacher layer m·N/M (TinyBERT's
    uniform map); this needs the teacher's hidden and intermediate sizes. `init="pruned"` (BERT-style encoders) also
    starts from the teacher at any smaller width: the most important hidden channels, heads, head dimensions and FFN
    neurons of those layers, measured on `calibration_data` (a few batches of model inputs; see `nlpkd.pruning`).
    `init="auto"`: `pruned` when `calibration_data` is given and the pair allows it, else `random` (logged).
    """
    if init not in STUDENT_INITS:
        raise ValueError(f"init must be one of {STUDENT_INITS}, got {init!r}.")
    if init == "pruned" and calibration_data is None:
        raise ValueError(
            "init='pruned' ranks the teacher's channels, heads and neurons on data: pass calibration_data, a few "
            "batches of model inputs (e.g. 8 batches of the training set)."
        )
    sizes = dict(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size, intermediate_size=intermediate_size)
    sizes.update(num_attention_heads=num_attention_heads, num_decoder_layers=num_decoder_layers)
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})."
        )
    config = copy.deepcopy(teacher.config)
    shape = {
        "num_hidden_layers": num_hidden_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
    }
    if getattr(config, "is_encoder_decoder", False):
        decoder_layers = num_hidden_layers if num_decoder_layers is None else num_decoder_layers
        config = _shape_seq2seq(config, shape, decoder_layers)
    else:
        _shape(config, shape)
    config.architectures = [type(teacher).__name__]
    config._name_or_path = ""
    student = type(teacher)(config)
    if init == "auto":
        init = "pruned" if _auto_prunes(teacher, student, calibration_data) else "random"
    if init == "teacher_layers":
        _copy_teacher_layers(teacher, student)
    elif init == "pruned":
        prune_into(teacher, student, calibration_data)
    student.nlpkd_init = init  # how it started (`auto` resolved), for the model card; not saved with the weights
    return student


def _auto_prunes(teacher: PreTrainedModel, student: PreTrainedModel, calibration_data) -> bool:
    problem = "no calibration data" if calibration_data is None else pruning_problem(teacher, student)
    if problem is None:
        logger.info("Student init: pruned from the teacher (init='auto').")
        return True
    logger.info("Student init: random (init='auto'; pruning does not apply: %s)", problem)
    return False


def _shape(config, shape: dict) -> None:
    for name, value in shape.items():
        field = next((alias for alias in CONFIG_ALIASES.get(name, (name,)) if hasattr(config, alias)), None)
        if field is None:
            raise ValueError(f"{type(config).__name__} has no `{name}`; make_student cannot shape this student.")
        setattr(config, field, value)


def _shape_seq2seq(config, shape: dict, decoder_layers: int):
    if hasattr(config, "encoder") and hasattr(config, "decoder"):  # EncoderDecoderModel: two ordinary configs
        from transformers import EncoderDecoderConfig

        _shape(config.encoder, shape)
        _shape(config.decoder, {**shape, "num_hidden_layers": decoder_layers})
        shaped = EncoderDecoderConfig.from_encoder_decoder_configs(config.encoder, config.decoder)
        for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "tie_word_embeddings"):
            if getattr(config, name, None) is not None:
                setattr(shaped, name, getattr(config, name))
        return shaped
    stacks = {  # (name in BART/Marian configs, name in T5 configs)
        "encoder_layers": (shape["num_hidden_layers"], ("encoder_layers", "num_layers")),
        "decoder_layers": (decoder_layers, ("decoder_layers", "num_decoder_layers")),
        "width": (shape["hidden_size"], ("d_model",)),
        "encoder_heads": (shape["num_attention_heads"], ("encoder_attention_heads", "num_heads")),
        "decoder_heads": (shape["num_attention_heads"], ("decoder_attention_heads", "num_heads")),
        "encoder_ffn": (shape["intermediate_size"], ("encoder_ffn_dim", "d_ff")),
        "decoder_ffn": (shape["intermediate_size"], ("decoder_ffn_dim", "d_ff")),
    }
    for name, (value, fields) in stacks.items():
        field = next((field for field in fields if field in config.to_dict()), None)
        if field is None:
            raise ValueError(f"{type(config).__name__} has no field for the {name}; make_student cannot shape it.")
        setattr(config, field, value)
    if "d_kv" in config.to_dict():  # T5 sets the head width apart from d_model
        config.d_kv = shape["hidden_size"] // shape["num_attention_heads"]
    return config


def _copy_teacher_layers(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    if getattr(teacher.config, "is_encoder_decoder", False):
        from .terms import stack_layers

        stacks = [(stack_layers(teacher, stack), stack_layers(student, stack)) for stack in ("encoder", "decoder")]
    else:
        stacks = [(find_layers(teacher), find_layers(student))]
    mismatched = _width_mismatches(teacher, student, stacks)
    if mismatched:
        raise ValueError(
            "init='teacher_layers' copies teacher weights, so the student's widths must equal the teacher's: "
            f"{'; '.join(mismatched)}. Use init='random' for a narrower student, or the teacher's widths."
        )
    for teacher_layers, student_layers in stacks:
        layer_map = uniform_layer_map(len(student_layers), len(teacher_layers))
        for index, (student_layer, teacher_layer) in enumerate(zip(student_layers, layer_map, strict=True)):
            state = teacher_layers[teacher_layer - 1].state_dict()
            # T5 keeps the relative position bias that every layer adds in its first layer only: a student layer's
            # weights that its mapped teacher layer lacks come from the teacher layer in the same place.
            same_place = teacher_layers[index].state_dict()
            missing = student_layer.state_dict().keys() - state.keys()
            state.update({name: same_place[name] for name in missing if name in same_place})
            student_layer.load_state_dict(state)
    # Everything outside the layer stacks (embeddings, pooler, task head) is copied by name.
    layer_params = {id(p) for _, student_layers in stacks for p in student_layers.parameters()}
    teacher_state = teacher.state_dict()
    outside = {
        name: teacher_state[name]
        for name, param in student.named_parameters()
        if id(param) not in layer_params and name in teacher_state and teacher_state[name].shape == param.shape
    }
    student.load_state_dict(outside, strict=False)


def _width_mismatches(teacher: PreTrainedModel, student: PreTrainedModel, stacks: list) -> list[str]:
    if not getattr(teacher.config, "is_encoder_decoder", False):
        return [
            f"{name} {getattr(student.config, name, None)} vs teacher {getattr(teacher.config, name, None)}"
            for name in ("hidden_size", "intermediate_size", "n_inner")
            if getattr(student.config, name, None) != getattr(teacher.config, name, None)
        ]
    mismatched = []
    for teacher_layers, student_layers in stacks:
        teacher_state = teacher_layers[0].state_dict()
        for name, param in student_layers[0].state_dict().items():
            if name in teacher_state and teacher_state[name].shape != param.shape:
                mismatched.append(f"{name} {tuple(param.shape)} vs teacher {tuple(teacher_state[name].shape)}")
    return mismatched[:3]
