"""Build a TinyBERT-style student from a teacher: same class and task head, fewer and narrower layers."""

import copy
from typing import Literal

from transformers import PreTrainedModel

from .capture import find_layers
from .layer_map import uniform_layer_map

STUDENT_INITS = ("random", "teacher_layers")
# Config fields under other names: GPT-2 calls the FFN width n_inner, DistilBERT hidden_dim.
CONFIG_ALIASES = {"intermediate_size": ("intermediate_size", "n_inner", "hidden_dim")}


def make_student(
    teacher: PreTrainedModel,
    num_hidden_layers: int = 4,
    hidden_size: int = 312,
    num_attention_heads: int = 12,
    intermediate_size: int = 1200,
    init: Literal["random", "teacher_layers"] = "random",
) -> PreTrainedModel:
    """A student of the teacher's own model class (task head, labels and vocabulary included).

    The defaults give TinyBERT4's shape (4 layers, 312 wide, 12 heads, 1200 FFN). `init="teacher_layers"` copies
    the teacher's embeddings, task head and, for student layer m, teacher layer m·N/M (TinyBERT's uniform map);
    this needs the teacher's hidden and intermediate sizes.
    """
    if init not in STUDENT_INITS:
        raise ValueError(f"init must be one of {STUDENT_INITS}, got {init!r}.")
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
    for name, value in shape.items():
        field = next((alias for alias in CONFIG_ALIASES.get(name, (name,)) if hasattr(config, alias)), None)
        if field is None:
            raise ValueError(f"{type(config).__name__} has no `{name}`; make_student cannot shape this student.")
        setattr(config, field, value)
    config.architectures = [type(teacher).__name__]
    config._name_or_path = ""
    student = type(teacher)(config)
    if init == "teacher_layers":
        _copy_teacher_layers(teacher, student)
    return student


def _copy_teacher_layers(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    mismatched = [
        f"{name} {getattr(student.config, name, None)} vs teacher {getattr(teacher.config, name, None)}"
        for name in ("hidden_size", "intermediate_size", "n_inner")
        if getattr(student.config, name, None) != getattr(teacher.config, name, None)
    ]
    if mismatched:
        raise ValueError(
            "init='teacher_layers' copies teacher weights, so the student's widths must equal the teacher's: "
            f"{'; '.join(mismatched)}. Use init='random' for a narrower student, or the teacher's widths."
        )
    teacher_layers, student_layers = find_layers(teacher), find_layers(student)
    layer_map = uniform_layer_map(len(student_layers), len(teacher_layers))
    for student_layer, teacher_layer in zip(student_layers, layer_map, strict=True):
        student_layer.load_state_dict(teacher_layers[teacher_layer - 1].state_dict())
    # Everything outside the layer stack (embeddings, pooler, task head) is copied by name.
    layer_params = {id(p) for p in student_layers.parameters()}
    teacher_state = teacher.state_dict()
    outside = {
        name: teacher_state[name]
        for name, param in student.named_parameters()
        if id(param) not in layer_params and name in teacher_state and teacher_state[name].shape == param.shape
    }
    student.load_state_dict(outside, strict=False)
