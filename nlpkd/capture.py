"""Attention scores without eager attention.

Transformers' SDPA attention returns no attention weights, so the self-attention query and key projections of
the mapped layers are recorded with forward hooks, and the pre-softmax scores Q·Kᵀ·scale are computed from them.
"""

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ProjectionNames:
    query: str
    key: str
    value: str
    scaled: bool = True  # T5 adds no 1/√d to its scores


# How architectures name their self-attention projections; the first whose names a layer has wins.
PROJECTION_NAMES = (
    ProjectionNames("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM, XLM-R
    ProjectionNames("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ProjectionNames("q_proj", "k_proj", "v_proj"),  # BART, Marian, mBART
    ProjectionNames("q", "k", "v", scaled=False),  # T5
)
CROSS_ATTENTION_PARTS = ("crossattention", "encoder_attn", "EncDecAttention")
LAYER_LIST_NAMES = ("layer", "layers", "h", "block")


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers (e.g. `bert.encoder.layer`), found by its length and name."""
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


def find_query_key(layer: nn.Module, model_name: str) -> tuple[nn.Linear, nn.Linear, ProjectionNames]:
    """The self-attention query and key projections inside one transformer layer."""
    for path, module in layer.named_modules():
        if any(part in path for part in CROSS_ATTENTION_PARTS):
            continue
        for names in PROJECTION_NAMES:
            query, key = getattr(module, names.query, None), getattr(module, names.key, None)
            if isinstance(query, nn.Linear) and isinstance(key, nn.Linear):
                return query, key, names
    known = ", ".join(f"{n.query}/{n.key}/{n.value}" for n in PROJECTION_NAMES)
    raise ValueError(
        f"Attention distillation does not know the self-attention projections of {model_name}: none of {known} "
        f"found in its layers. Set attention_weight=0, or add its names to nlpkd.capture.PROJECTION_NAMES."
    )


class AttentionCapture:
    """Records the self-attention queries and keys of chosen layers (1-based) while `recording()` is active."""

    def __init__(self, model: nn.Module, layers: list[int]):
        self.num_heads = model.config.num_attention_heads
        self.layers = sorted(set(layers))
        self._recording = False
        self._outputs: dict[tuple[int, str], torch.Tensor] = {}
        self._scale: dict[int, bool] = {}
        self._handles = []
        blocks = find_layers(model)
        for layer in self.layers:
            query, key, names = find_query_key(blocks[layer - 1], type(model).__name__)
            self._scale[layer] = names.scaled
            self._handles.append(query.register_forward_hook(self._hook(layer, "query")))
            self._handles.append(key.register_forward_hook(self._hook(layer, "key")))

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
        """(B, H, T, T) fp32 pre-softmax scores of `layer`, without any attention mask added."""
        if (layer, "query") not in self._outputs:
            raise RuntimeError(f"No attention recorded for layer {layer}; run the model inside `recording()`.")
        query, key = self._outputs[layer, "query"].float(), self._outputs[layer, "key"].float()
        batch, length, width = query.shape
        head_dim = width // self.num_heads
        query = query.view(batch, length, self.num_heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        key = key.view(batch, key.shape[1], self.num_heads, head_dim).transpose(1, 2)
        scores = query @ key.transpose(-1, -2)
        return scores * head_dim**-0.5 if self._scale[layer] else scores

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __del__(self):
        self.remove()
