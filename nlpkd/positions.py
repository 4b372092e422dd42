"""Which positions each loss averages over, and how many of them a batch holds.

The trainer divides every loss by its count over the whole optimizer step (all gradient-accumulation micro-batches
and, with `average_tokens_across_devices`, all processes), so that accumulating micro-batches of uneven lengths
gives the gradients of one big batch.
"""

import torch
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from .losses import IGNORE_INDEX  # re-exported: the trainer, terms and data code import it from here


def _class_names(mapping) -> set[str]:
    names = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


CAUSAL_LM_CLASSES = _class_names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
MASKED_LM_CLASSES = _class_names(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
TOKEN_LEVEL_CLASSES = MASKED_LM_CLASSES | _class_names(MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)
SEQ2SEQ_LM_CLASSES = _class_names(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
BARE_MODEL_CLASSES = _class_names(MODEL_MAPPING_NAMES)


def logit_level(model: PreTrainedModel) -> str:
    """How a model's logits line up with its labels.

    `causal`: logits at position i predict token i+1 (causal LM heads; the model's own loss shifts the labels).
    `token`: one prediction per position, aligned with the labels (masked LM, token classification, seq2seq LM).
    `sequence`: one prediction per sequence (classification, regression).
    """
    name = type(model).__name__
    if name in SEQ2SEQ_LM_CLASSES:
        return "token"
    if name in CAUSAL_LM_CLASSES:
        return "causal"
    if name in TOKEN_LEVEL_CLASSES:
        return "token"
    return "sequence"


def is_bare_model(model: PreTrainedModel) -> bool:
    """A base model with no task head (e.g. `BertModel`): no labels loss and no logits to distil."""
    return type(model).__name__ in BARE_MODEL_CLASSES


def logit_mask(inputs: dict, level: str) -> torch.Tensor | None:
    """Boolean mask of the distilled logit positions (for `causal`, over logits[:, :-1]); None = every position.

    Positions with a label count (label != -100, the next token's label for `causal`); without labels, every real
    token does.
    """
    if level == "sequence":
        return None
    labels = inputs.get("labels")
    if level == "causal":
        if labels is not None:
            return labels[:, 1:] != IGNORE_INDEX
        mask = inputs.get("attention_mask")
        return None if mask is None else mask[:, 1:].bool()
    if labels is not None:
        return labels != IGNORE_INDEX
    mask = inputs.get("decoder_attention_mask" if "decoder_input_ids" in inputs else "attention_mask")
    return None if mask is None else mask.bool()


def aligned_logits(logits: torch.Tensor, level: str) -> torch.Tensor:
    """The logits that carry a prediction: for `causal`, logits[:, :-1] (position i predicts token i+1, so the last
    position predicts nothing); otherwise all of them."""
    return logits[:, :-1] if level == "causal" else logits


def aligned_labels(labels: torch.Tensor, level: str) -> torch.Tensor:
    """The labels `aligned_logits` predict: for `causal`, labels[:, 1:]; otherwise the labels."""
    return labels[:, 1:] if level == "causal" else labels


def label_grid(labels: torch.Tensor, level: str) -> torch.Tensor:
    """The labels on the full logit grid of a token-level model, (B, T): for `causal`, position i holds label i+1
    (the next token) and the last position -100; otherwise the labels."""
    if level != "causal":
        return labels
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def distilled_mask(inputs: dict, logits: torch.Tensor, level: str) -> torch.Tensor | None:
    """`logit_mask` of the batch, checked against the (B, T) positions of the aligned `logits` (B, T, C);
    None = every position."""
    mask = logit_mask(inputs, level)
    if mask is not None and mask.shape != logits.shape[:-1]:
        raise ValueError(
            f"Cannot line up logits {tuple(logits.shape)} with labels/mask {tuple(mask.shape)} ({level}-level logits)."
        )
    return mask


def logit_grid(inputs: dict, logits: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits as they are (no slice, no copy: (B, T, V) logits are hundreds of MB) and the boolean mask
    of the positions logit KD counts over their grid, (B, T) — for `causal`, the next-token positions with the last
    one false, since it predicts nothing; None for `sequence` (every row counts)."""
    if level == "sequence":
        return logits, None
    mask = distilled_mask(inputs, aligned_logits(logits, level), level)
    if level == "causal":
        if mask is None:
            mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)[:, 1:]
        mask = torch.nn.functional.pad(mask.bool(), (0, 1), value=False)
    return logits, mask


def distilled_rows(inputs: dict, logits: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits at the positions logit KD counts, flattened row by row into (N, C), and how many
    positions each row has (B,): the layout of the teacher cache."""
    logits = aligned_logits(logits, level)
    if level == "sequence":
        return logits, torch.ones(logits.shape[0], dtype=torch.long, device=logits.device)
    mask = distilled_mask(inputs, logits, level)
    if mask is None:
        mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    return logits[mask], mask.sum(1)


def side_mask(inputs: dict, side: str) -> torch.Tensor | None:
    """(B, T) mask of the real positions of the `source` (the input_ids; of a seq2seq model, its encoder) or the
    `target` (a seq2seq decoder's inputs: the positions with a label, else `decoder_attention_mask`); None = all.

    A decoder input is real exactly when its position has a label: it is the start token or the previous label.
    """
    if side == "source":
        return inputs.get("attention_mask")
    labels = inputs.get("labels")
    if labels is not None:
        return labels != IGNORE_INDEX
    return inputs.get("decoder_attention_mask")


def batch_counts(inputs: dict, level: str, causal_attention: bool, seq2seq: bool = False) -> dict[str, torch.Tensor]:
    """How many positions each loss averages over in this batch.

    `labels`: the predictions the student's own loss averages (next-token labels for causal LMs), `logits`: the
    distilled logit positions, `tokens`: real tokens (hidden states, attention rows), `pairs`: real query–key pairs.
    With `seq2seq`, also the decoder's `target_tokens` and (causal) `target_pairs`, and the cross-attention's
    `cross_pairs` (real decoder query × real encoder key); `tokens` and `pairs` are then the encoder's.
    """
    reference = inputs.get("input_ids", inputs.get("inputs_embeds"))
    batch, length = reference.shape[:2]
    device = reference.device
    attention_mask = inputs.get("attention_mask")
    labels = inputs.get("labels")

    counts = {}
    if labels is None:
        counts["labels"] = torch.zeros((), device=device)
    else:
        counts["labels"] = (aligned_labels(labels, level) != IGNORE_INDEX).sum()
    logits = logit_mask(inputs, level)
    if logits is not None:
        counts["logits"] = logits.sum()
    elif level == "sequence":
        counts["logits"] = torch.full((), batch, device=device)
    else:
        target = inputs.get("decoder_input_ids", reference)
        positions = target.shape[1] - (1 if level == "causal" else 0)
        counts["logits"] = torch.full((), batch * positions, device=device)
    tokens = torch.ones(batch, length, device=device) if attention_mask is None else attention_mask
    per_row = tokens.sum(-1)  # real tokens per row: pair counts follow from them, no (B, T, T) mask is built
    counts["tokens"] = per_row.sum()
    # A seq2seq model's `pairs` are its encoder's, never causal (`causal_attention` then says so of the decoder).
    counts["pairs"] = _pairs(per_row, causal_attention and not seq2seq)
    # The trainer makes decoder_input_ids from the labels after the batch is counted: they have the labels' shape.
    decoder_ids = inputs.get("decoder_input_ids", labels)
    if seq2seq and decoder_ids is not None:
        target = side_mask(inputs, "target")
        if target is None:
            target = torch.ones(decoder_ids.shape[:2], device=device)
        target_per_row = target.sum(-1)
        counts["target_tokens"] = target_per_row.sum()
        counts["target_pairs"] = _pairs(target_per_row, causal=True)
        counts["cross_pairs"] = (target_per_row * per_row).sum()
    return {name: count.to(device=device, dtype=torch.float32) for name, count in counts.items()}


def _pairs(tokens_per_row: torch.Tensor, causal: bool) -> torch.Tensor:
    """Query–key pairs of real tokens, over rows with these many real tokens: n² per row, or n(n + 1)/2 when
    `causal` (pairs whose key is not after the query, wherever the padding is)."""
    tokens_per_row = tokens_per_row.long()
    return (tokens_per_row * (tokens_per_row + 1) // 2 if causal else tokens_per_row**2).sum()
