"""Layer-wise distillation terms: which student hidden states and attention maps learn from which of the teacher's,
over which positions, normalised by which count, with which weight.

An encoder-only or decoder-only model has one stack: `hidden_loss` and `attention_loss`. A seq2seq model has three:
the encoder (`encoder_hidden_loss`, `encoder_attention_loss`), the decoder (`decoder_hidden_loss`,
`decoder_attention_loss`, causal) and the decoder's cross-attention (`cross_attention_loss`: decoder queries against
encoder keys), each with its own layer map.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .capture import AttentionCapture, stack_layer_list
from .losses import attention_kl_loss, attention_scores_mse_loss, hidden_mse_loss
from .positions import side_mask

ATTENTION_LOSSES = {"mse": attention_scores_mse_loss, "kl": attention_kl_loss}


@dataclass(frozen=True)
class HiddenTerm:
    """MSE between projected student states and the mapped teacher states (embeddings map 0 -> 0)."""

    name: str
    outputs: str  # the model output holding the stack's states: hidden_states, encoder_/decoder_hidden_states
    layer_map: list[int]  # entry m-1: the teacher layer student layer m learns from
    side: str  # "source" or "target": whose real positions count (see positions.side_mask)
    count: str  # the positions.batch_counts key that normalises it
    weight: float  # relative to hidden_weight

    def loss(self, student_states: tuple[torch.Tensor, ...], teacher_outputs, inputs: dict) -> torch.Tensor:
        teacher_states = getattr(teacher_outputs, self.outputs)
        mask = side_mask(inputs, self.side)
        teacher_layers = [0, *self.layer_map]
        per_layer = [
            hidden_mse_loss(student, teacher_states[layer], mask)
            for student, layer in zip(student_states, teacher_layers, strict=True)
        ]
        return torch.stack(per_layer).mean()


@dataclass(frozen=True)
class AttentionTerm:
    """Attention-map loss between the captured scores of mapped layers."""

    name: str
    student: AttentionCapture
    teacher: AttentionCapture
    layer_map: list[int]
    queries: str  # side of the queries
    keys: str | None  # side of the keys when they differ from the queries' (cross-attention)
    causal: bool
    count: str  # for attention_loss='mse' (pairs); the per-row KL counts `row_count`
    row_count: str
    weight: float  # relative to attention_weight

    def loss(self, inputs: dict, kind: str) -> torch.Tensor:
        loss = ATTENTION_LOSSES[kind]
        query_mask = side_mask(inputs, self.queries)
        key_mask = None if self.keys is None else side_mask(inputs, self.keys)
        if self.keys is not None and key_mask is None:  # no attention mask: every source token is a real key
            key_mask = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        per_layer = [
            loss(
                self.student.scores(student_layer),
                self.teacher.scores(teacher_layer),
                query_mask,
                causal=self.causal,
                key_mask=key_mask,
            )
            for student_layer, teacher_layer in enumerate(self.layer_map, start=1)
        ]
        return torch.stack(per_layer).mean()


def single_stack_terms(student, teacher, layer_map: list[int], hidden: bool, attention: bool) -> tuple[list, list]:
    """The terms of an encoder-only or decoder-only pair."""
    hidden_terms = [HiddenTerm("hidden_loss", "hidden_states", layer_map, "source", "tokens", 1.0)] if hidden else []
    attention_terms = []
    if attention:
        student_capture = AttentionCapture(student, list(range(1, len(layer_map) + 1)))
        teacher_capture = AttentionCapture(teacher, layer_map)
        causal = student_capture.causal
        attention_terms.append(
            AttentionTerm(
                "attention_loss",
                student_capture,
                teacher_capture,
                layer_map,
                "source",
                None,
                causal,
                "pairs",
                "tokens",
                1.0,
            )  # fmt: skip
        )
    return hidden_terms, attention_terms


def seq2seq_terms(student, teacher, maps: dict[str, list[int]], args) -> tuple[list, list]:
    """The terms of an encoder-decoder pair; `maps` holds the `encoder` and `decoder` layer maps (the
    cross-attention follows the decoder's). A stack or cross-attention whose weight is 0 gets no term."""
    weights = {
        "encoder": args.encoder_weight,
        "decoder": args.decoder_weight,
        "cross": args.cross_attention_weight,
    }
    hidden_terms, attention_terms = [], []
    for stack, side in (("encoder", "source"), ("decoder", "target")):
        count = "tokens" if stack == "encoder" else "target_tokens"
        if args.hidden_weight > 0 and weights[stack] > 0:
            term = HiddenTerm(
                f"{stack}_hidden_loss", f"{stack}_hidden_states", maps[stack], side, count, weights[stack]
            )
            hidden_terms.append(term)
    if args.attention_weight == 0:
        return hidden_terms, attention_terms
    specs = (
        ("encoder_attention_loss", "encoder", "source", None, False, "pairs", "tokens"),
        ("decoder_attention_loss", "decoder", "target", None, True, "target_pairs", "target_tokens"),
        ("cross_attention_loss", "cross", "target", "source", False, "cross_pairs", "target_tokens"),
    )
    for name, weight_key, queries, keys, causal, count, row_count in specs:
        if weights[weight_key] == 0:
            continue
        stack = "decoder" if weight_key == "cross" else weight_key
        layer_map, cross = maps[stack], weight_key == "cross"
        student_capture = AttentionCapture(
            student, list(range(1, len(layer_map) + 1)), stack_layers(student, stack), cross=cross
        )
        teacher_capture = AttentionCapture(teacher, layer_map, stack_layers(teacher, stack), cross=cross)
        attention_terms.append(
            AttentionTerm(
                name,
                student_capture,
                teacher_capture,
                layer_map,
                queries,
                keys,
                causal,
                count,
                row_count,
                weights[weight_key],
            )  # fmt: skip
        )
    return hidden_terms, attention_terms


def stack_layers(model: nn.Module, stack: str) -> nn.ModuleList:
    """The transformer layers of a seq2seq model's `encoder` or `decoder`."""
    return stack_layer_list(model.get_encoder() if stack == "encoder" else model.get_decoder())


def num_stack_layers(model: nn.Module, stack: str) -> int:
    return len(stack_layers(model, stack))


def stack_width(model: nn.Module, stack: str) -> int:
    """Hidden width of a seq2seq model's `encoder` or `decoder` (of the model itself for other stacks)."""
    config = getattr(model.config, stack, model.config) if stack in ("encoder", "decoder") else model.config
    return config.hidden_size


def stack_heads(model: nn.Module, stack: str) -> int:
    """Attention heads of the first layer of a seq2seq model's `encoder` or `decoder`."""
    from .capture import find_query_key

    return find_query_key(stack_layers(model, stack)[0], type(model).__name__).num_heads
