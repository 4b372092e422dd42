"""Attention scores without eager attention.

Transformers' SDPA attention returns no attention weights, so the query and key projections of the mapped layers'
self-attention (or, in a decoder, cross-attention) are recorded with forward hooks, and the pre-softmax scores
Q·Kᵀ·scale are computed from them. The scale, the head count and whether the attention is causal are read from the
attention module itself (`scaling`, `num_heads`/`num_attention_heads`/`n_heads`, `is_causal`).
"""

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class ProjectionNames:
    query: str
    key: str
    value: str
    scaled: bool = True  # T5 adds no 1/√d to its scores
    fused: bool = False  # one projection returns [Q; K; V] concatenated (GPT-2's c_attn)


# How architectures name their self-attention projections; the first whose names a layer has wins.
PROJECTION_NAMES = (
    ProjectionNames("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM, XLM-R
    ProjectionNames("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ProjectionNames("q_proj", "k_proj", "v_proj"),  # BART, Marian, mBART
    ProjectionNames("q", "k", "v", scaled=False),  # T5
    ProjectionNames("c_attn", "c_attn", "c_attn", fused=True),  # GPT-2
)
PROJECTION_TYPES = (nn.Linear, Conv1D)
CROSS_ATTENTION_PARTS = ("crossattention", "encoder_attn", "EncDecAttention")
LAYER_LIST_NAMES = ("layer", "layers", "h", "block")
HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def find_layers(model: nn.Module, num_layers: int | None = None) -> nn.ModuleList:
    """The model's list of transformer layers (e.g. `bert.encoder.layer`), found by its name and length
    (`num_layers`, default `config.num_hidden_layers`; pass a stack such as `model.get_encoder()` for seq2seq)."""
    if num_layers is None:
        num_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == num_layers
            and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES
        ):
            return module
    raise ValueError(
        f"Cannot find the {num_layers} transformer layers of {type(model).__name__}: no nn.ModuleList named one of "
        f"{LAYER_LIST_NAMES} with that length. Hidden-state and attention distillation need one."
    )


def stack_layer_list(stack: nn.Module) -> nn.ModuleList:
    """The layer list of a stack (a seq2seq model's encoder or decoder): its first nn.ModuleList named as in
    LAYER_LIST_NAMES (depth-first, so T5's `block` comes before each block's own `layer` list)."""
    for name, module in stack.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES:
            return module
    raise ValueError(f"{type(stack).__name__} has no nn.ModuleList of layers named one of {LAYER_LIST_NAMES}.")


@dataclass(frozen=True)
class SelfAttention:
    """The parts of one layer's self-attention that scores are computed from."""

    query: nn.Module
    key: nn.Module
    value: nn.Module | None
    names: ProjectionNames
    scale: float | None  # None: 1/√head_dim (or 1 for unscaled architectures)
    causal: bool
    num_heads: int | None  # None: the model config's


def _is_cross_attention(path: str, module: nn.Module) -> bool:
    return any(part in path for part in CROSS_ATTENTION_PARTS) or getattr(module, "is_cross_attention", False)


def find_query_key(layer: nn.Module, model_name: str, cross: bool = False) -> SelfAttention:
    """The self-attention (or with `cross`, the cross-attention) query and key projections inside one transformer
    layer, with their scale, causality and head count."""
    kind = "cross-attention" if cross else "self-attention"
    for path, module in layer.named_modules():
        if _is_cross_attention(path, module) != cross:
            continue
        for names in PROJECTION_NAMES:
            query, key = getattr(module, names.query, None), getattr(module, names.key, None)
            if isinstance(query, PROJECTION_TYPES) and isinstance(key, PROJECTION_TYPES):
                scale = getattr(module, "scaling", None)
                causal = bool(getattr(module, "is_causal", False)) and not cross
                heads = next(
                    (getattr(module, n) for n in HEAD_COUNT_NAMES if isinstance(getattr(module, n, None), int)), None
                )
                value = getattr(module, names.value, None)
                value = value if isinstance(value, PROJECTION_TYPES) else None
                scale = scale if isinstance(scale, float) else None
                return SelfAttention(query, key, value, names, scale, causal, heads)
    known = ", ".join(f"{n.query}/{n.key}/{n.value}" for n in PROJECTION_NAMES)
    raise ValueError(
        f"Attention distillation does not know the {kind} projections of {model_name}: none of {known} found in "
        f"its layers. Set attention_weight=0 (or that stack's weight), or add its names to "
        "nlpkd.capture.PROJECTION_NAMES."
    )


class AttentionCapture:
    """Records the self-attention queries and keys (with `values`, also the values) of chosen layers (1-based) while
    `recording()` is active.

    `blocks` is the list of layers to look in (default: `find_layers(model)`; a seq2seq model's encoder or decoder
    layers); `cross` records the decoder layers' cross-attention instead (queries from the decoder, keys from the
    encoder's states).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[int],
        blocks: nn.ModuleList | None = None,
        cross: bool = False,
        values: bool = False,
    ):
        self.num_heads = getattr(model.config, "num_attention_heads", None)
        self.layers = sorted(set(layers))
        self._recording = False
        self._outputs: dict[tuple[int, str], torch.Tensor] = {}
        self._attention: dict[int, SelfAttention] = {}
        self._handles = []
        blocks = find_layers(model) if blocks is None else blocks
        for layer in self.layers:
            attention = find_query_key(blocks[layer - 1], type(model).__name__, cross=cross)
            self._attention[layer] = attention
            if attention.names.fused:
                self._handles.append(attention.query.register_forward_hook(self._hook(layer, "fused")))
            else:
                self._handles.append(attention.query.register_forward_hook(self._hook(layer, "query")))
                self._handles.append(attention.key.register_forward_hook(self._hook(layer, "key")))
                if values and attention.value is not None:
                    self._handles.append(attention.value.register_forward_hook(self._hook(layer, "value")))
        # Whether a query may attend to later keys: the attention losses mask future keys of causal models.
        self.causal = any(attention.causal for attention in self._attention.values())

    def _hook(self, layer: int, role: str):
        # A weak reference: the hook must not keep its capture alive, so that `__del__` can remove the hooks.
        capture_ref = weakref.ref(self)

        def record(module, inputs, output):
            capture = capture_ref()
            if capture is not None and capture._recording:
                capture._outputs[layer, role] = output

        return record

    @contextmanager
    def recording(self, enabled: bool = True):
        """Record during the `with` block; scores stay readable after it until the next recording."""
        self._outputs.clear()
        self._recording = enabled
        try:
            yield self
        finally:
            self._recording = False

    def scores(self, layer: int) -> torch.Tensor:
        """(B, H, T, S) fp32 pre-softmax scores of `layer`, without any attention mask added."""
        query, key = self.query_key(layer)
        with torch.autocast(query.device.type, enabled=False):  # keep an enclosing bf16 autocast off the product
            return query @ key.transpose(-1, -2)

    def stacked_scores(self, layers: list[int]) -> torch.Tensor:
        """(L, B, H, T, S) fp32 `scores` of `layers`, in their order, from one batched product."""
        query, key = self.stacked_query_key(layers)
        with torch.autocast(query.device.type, enabled=False):
            return query @ key.transpose(-1, -2)

    def stacked_query_key(self, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`query_key` of `layers` stacked in their order: ((L, B, H, T, d), (L, B, H, S, d))."""
        queries, keys = zip(*(self.query_key(layer) for layer in layers), strict=True)
        return torch.stack(queries), torch.stack(keys)

    def query_key(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 queries of `layer`, already multiplied by the score scale, (B, H, T, d), and its keys (B, H, S, d):
        their product is the layer's pre-softmax scores. Projections recorded under bf16/fp16 autocast are upcast."""
        attention = self._attention.get(layer)
        if attention is None:
            raise RuntimeError(f"Layer {layer} is not captured; this capture holds layers {self.layers}.")
        if attention.names.fused and (layer, "fused") in self._outputs:
            query, key, _ = self._outputs[layer, "fused"].float().chunk(3, dim=-1)
        elif (layer, "query") in self._outputs:
            query, key = self._outputs[layer, "query"].float(), self._outputs[layer, "key"].float()
        else:
            raise RuntimeError(f"No attention recorded for layer {layer}; run the model inside `recording()`.")
        batch, length, width = query.shape
        num_heads = attention.num_heads or self.num_heads
        head_dim = width // num_heads
        scale = attention.scale
        if scale is None:
            scale = head_dim**-0.5 if attention.names.scaled else 1.0
        # The scale goes on the (B, T, W) queries, not on the (B, H, T, S) scores: a pass over T² entries saved.
        query = (query * scale).view(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        key = key.view(batch, key.shape[1], num_heads, head_dim).transpose(1, 2)
        return query, key

    def projections(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, W) fp32 queries, keys and values of `layer` (a capture made with `values=True`)."""
        if (layer, "fused") in self._outputs:
            query, key, value = self._outputs[layer, "fused"].float().chunk(3, dim=-1)
            return query, key, value
        if (layer, "value") not in self._outputs:
            raise RuntimeError(f"No values recorded for layer {layer}: make the capture with values=True and run the "
                               "model inside `recording()`.")  # fmt: skip
        return tuple(self._outputs[layer, role].float() for role in ("query", "key", "value"))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __del__(self):
        self.remove()
