"""Pruned initialisation (the CoFi / Minitron idea): a narrower, shallower student that starts from the teacher.

A calibration pass over a few batches of task (or unlabelled) data measures, on the teacher, the importance of
- each hidden channel: the mean |activation| of the channel in the embeddings' and every layer's output,
- each FFN neuron of a layer: the mean |activation| after the FFN's non-linearity,
- each attention head dimension: for queries and keys together, mean |q_d| · mean |k_d|; for values, mean |v_d|,
  and each head: the sum of its dimensions' importance.
The student keeps the top channels, neurons, heads and head dimensions (in their original order) of the teacher
layers its uniform layer map picks (TinyBERT's g(m) = m·N/M), and every teacher weight is sliced to them: the
embeddings, each kept layer, the pooler and the task head. Queries are scaled by √(d_student / d_teacher) so that a
kept head's scores keep the teacher's scale. The result is a plain model of the teacher's class.

BERT-style encoders only (BERT, RoBERTa, ELECTRA, XLM-R: `attention.self.query/key/value`, `attention.output.dense`,
`intermediate.dense`, `output.dense`, with their LayerNorms); other models get a clear error.
"""

import math
from collections.abc import Iterable

import torch
from transformers import PreTrainedModel

from .capture import find_layers
from .layer_map import uniform_layer_map

# Each BERT-style layer parameter: the index set each of its dimensions is sliced by.
HIDDEN, QUERY_KEY, VALUE, FFN = "hidden", "query_key", "value", "ffn"
LAYER_AXES = {
    "attention.self.query.weight": (QUERY_KEY, HIDDEN),
    "attention.self.query.bias": (QUERY_KEY,),
    "attention.self.key.weight": (QUERY_KEY, HIDDEN),
    "attention.self.key.bias": (QUERY_KEY,),
    "attention.self.value.weight": (VALUE, HIDDEN),
    "attention.self.value.bias": (VALUE,),
    "attention.output.dense.weight": (HIDDEN, VALUE),
    "attention.output.dense.bias": (HIDDEN,),
    "attention.output.LayerNorm.weight": (HIDDEN,),
    "attention.output.LayerNorm.bias": (HIDDEN,),
    "intermediate.dense.weight": (FFN, HIDDEN),
    "intermediate.dense.bias": (FFN,),
    "output.dense.weight": (HIDDEN, FFN),
    "output.dense.bias": (HIDDEN,),
    "output.LayerNorm.weight": (HIDDEN,),
    "output.LayerNorm.bias": (HIDDEN,),
}


@torch.no_grad()
def importance(teacher: PreTrainedModel, calibration_data: Iterable[dict], layers: list[int]) -> dict:
    """The teacher's importance scores (module docstring) over `calibration_data` (batches of model inputs, labels
    ignored), for its hidden channels and for the FFN neurons and attention head dimensions of `layers` (1-based)."""
    blocks = find_layers(teacher)
    sums: dict[tuple, torch.Tensor] = {}
    counts: dict[tuple, int] = {}

    def add(key: tuple, values: torch.Tensor, mask: torch.Tensor) -> None:
        # Mean |value| per channel over the real tokens: values (B, T, C), mask (B, T).
        selected = values.float().abs()[mask]
        sums[key] = sums.get(key, 0.0) + selected.sum(0)
        counts[key] = counts.get(key, 0) + selected.shape[0]

    batch_mask: list[torch.Tensor] = []
    handles = []
    for layer in layers:
        block = blocks[layer - 1]
        for role, module in (
            ("query", block.attention.self.query),
            ("key", block.attention.self.key),
            ("value", block.attention.self.value),
            ("ffn", block.intermediate),
        ):
            handles.append(
                module.register_forward_hook(lambda _m, _i, output, key=(role, layer): add(key, output, batch_mask[0]))
            )
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    try:
        for batch in calibration_data:
            features = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label")}
            mask = features.get("attention_mask")
            ids = features["input_ids"]
            batch_mask[:] = [torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()]
            outputs = teacher(**features, output_hidden_states=True)
            for hidden in outputs.hidden_states:
                add(("hidden",), hidden, batch_mask[0])
    finally:
        for handle in handles:
            handle.remove()
        teacher.train(was_training)
    if not counts:
        raise ValueError("calibration_data holds no batch: pruned initialisation needs a few batches of inputs.")
    return {key: total / max(counts[key], 1) for key, total in sums.items()}


def prune_into(teacher: PreTrainedModel, student: PreTrainedModel, calibration_data: Iterable[dict]) -> None:
    """Fill `student` (the teacher's class, narrower and shallower) with the teacher's most important slices."""
    teacher_config, student_config = teacher.config, student.config
    teacher_blocks, student_blocks = find_layers(teacher), find_layers(student)
    problem = pruning_problem(teacher, student)
    if problem is not None:
        raise ValueError(problem)
    layer_map = uniform_layer_map(len(student_blocks), len(teacher_blocks))
    scores = importance(teacher, calibration_data, sorted(set(layer_map)))
    hidden = _top(scores[("hidden",)], student_config.hidden_size)
    teacher_heads, student_heads = teacher_config.num_attention_heads, student_config.num_attention_heads
    teacher_dim = teacher_config.hidden_size // teacher_heads
    student_dim = student_config.hidden_size // student_heads
    for student_block, teacher_layer in zip(student_blocks, layer_map, strict=True):
        query_key = scores[("query", teacher_layer)] * scores[("key", teacher_layer)]
        indices = {
            HIDDEN: hidden,
            QUERY_KEY: _head_slices(query_key, teacher_heads, teacher_dim, student_heads, student_dim),
            VALUE: _head_slices(
                scores[("value", teacher_layer)], teacher_heads, teacher_dim, student_heads, student_dim
            ),
            FFN: _top(scores[("ffn", teacher_layer)], student_config.intermediate_size),
        }
        state = {}
        for name, value in teacher_blocks[teacher_layer - 1].state_dict().items():
            state[name] = _slice(value, [indices[axis] for axis in LAYER_AXES[name]])
        query_scale = math.sqrt(student_dim / teacher_dim)  # scores ∝ q·k/√d: keep the teacher's scale
        for name in ("attention.self.query.weight", "attention.self.query.bias"):
            state[name] = state[name] * query_scale
        student_block.load_state_dict(state)
    # Outside the layers (embeddings, pooler, task head): every teacher-width dimension keeps the kept channels.
    layer_params = {id(p) for p in student_blocks.parameters()}
    teacher_state = teacher.state_dict()
    width = teacher_config.hidden_size
    outside = {}
    for name, param in student.named_parameters():
        if id(param) in layer_params or name not in teacher_state:
            continue
        value = teacher_state[name]
        sliced = _slice(value, [hidden if size == width else None for size in value.shape])
        if sliced.shape != param.shape:
            raise ValueError(
                f"Pruned initialisation cannot fit the teacher's {name} {tuple(value.shape)} into the student's "
                f"{tuple(param.shape)}. Use init='random'."
            )
        outside[name] = sliced
    student.load_state_dict(outside, strict=False)
    student.tie_weights()


def pruning_problem(teacher: PreTrainedModel, student: PreTrainedModel) -> str | None:
    """Why `student` cannot be pruned from `teacher` (an architecture this module does not know, or a student size
    above the teacher's), or None when it can."""
    names = set(find_layers(teacher)[0].state_dict())
    if names != set(LAYER_AXES):
        return (
            f"init='pruned' knows BERT-style layers (BERT, RoBERTa, ELECTRA, XLM-R); {type(teacher).__name__}'s "
            f"layers hold {sorted(names - set(LAYER_AXES))[:3] or 'other parameters'}. Use init='random' or "
            "'teacher_layers'."
        )
    t, s = teacher.config, student.config
    wider = [
        f"{name} {getattr(s, name)} > teacher {getattr(t, name)}"
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
        if getattr(s, name) > getattr(t, name)
    ]
    if s.hidden_size // s.num_attention_heads > t.hidden_size // t.num_attention_heads:
        wider.append(
            f"head width {s.hidden_size // s.num_attention_heads} > teacher {t.hidden_size // t.num_attention_heads}"
        )
    if wider:
        sizes = "; ".join(wider)
        return f"init='pruned' keeps parts of the teacher, so no student size may exceed the teacher's: {sizes}."
    return None


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` largest scores, in their original order."""
    return scores.topk(count).indices.sort().values.cpu()


def _head_slices(
    scores: torch.Tensor, teacher_heads: int, teacher_dim: int, student_heads: int, student_dim: int
) -> torch.Tensor:
    """Indices into a (heads × head dim) projection axis: the `student_heads` most important heads, and in each the
    `student_dim` most important dimensions, heads and dimensions in their original order."""
    per_head = scores.view(teacher_heads, teacher_dim)
    heads = _top(per_head.sum(-1), student_heads)
    return torch.cat([head * teacher_dim + _top(per_head[head], student_dim) for head in heads.tolist()])


def _slice(value: torch.Tensor, indices: list[torch.Tensor | None]) -> torch.Tensor:
    for dim, index in enumerate(indices):
        if index is not None:
            value = value.index_select(dim, index.to(value.device))
    return value.clone()
