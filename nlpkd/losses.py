"""Distillation losses as pure functions of tensors.

Every loss upcasts to fp32, ignores masked positions, and clamps its denominator so that a batch with no valid
position gives 0 rather than NaN. None selects positions by a mask (`tensor[mask]`) or reads a tensor's value on the
host: masked positions are replaced by 0 with `torch.where` and counted with tensor sums, so no shape depends on the
data and a GPU never has to report back to the host in the middle of a training step.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOGIT_KINDS = ("kl", "soft_ce", "mse")
IGNORE_INDEX = -100  # a target that does not count (transformers' convention)
# Logits per chunk of logit KD, by device type: no temporary of a chunk (tempered logits, log-probabilities,
# probabilities) is larger, whatever the vocabulary. On a CPU, 2^16..2^18 fp32 (256 KiB-1 MiB: they stay in a core's
# cache) were the fastest for 4064 positions x 30,522 classes on 2 cores, forward and backward (benchmarks/
# logit_loss.py and earlier runs: 2^16 0.40-0.49 s, 2^17 0.36-0.46 s, 2^18 0.34-1.04 s, 2^19 1.0-1.7 s, unchunked
# 2.5-7.1 s); 2^17 was never slow. On a GPU, fewer and larger chunks keep the kernel launches few.
LOGIT_CHUNK_ELEMENTS = {"cpu": 2**17}
DEFAULT_LOGIT_CHUNK_ELEMENTS = 2**24


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is true; `mask` broadcasts against `values` (from the right).

    Sync-free: no selection, so no shape depends on the data (selecting makes a GPU host wait for the mask)."""
    if mask is None:
        return values.sum() / max(values.numel(), 1)  # an empty selection gives 0, not NaN
    mask = mask.bool()
    # Select rather than multiply: a masked position holding inf/NaN would turn a product by 0 into NaN.
    return torch.where(mask, values, 0.0).sum() / _broadcast_count(mask, values)


def _broadcast_count(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """How many elements of `values` the broadcast `mask` covers, at least 1, as a tensor (no host sync)."""
    repeats = values.numel() // max(mask.numel(), 1)  # every mask entry stands for this many values
    return (mask.sum() * repeats).clamp(min=1).to(torch.float32)


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "kl",
    mask: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    overwrite_teacher: bool = False,
) -> torch.Tensor:
    """Logit distillation loss, averaged over the valid positions.

    Computed in fp32 over chunks of positions (`chunk_elements` logits each): no (positions × classes) fp32 tensor is
    ever whole, and the gradient for the student's logits is made chunk by chunk during the forward pass and kept in
    their dtype until backward (as TRL's and Liger's chunked losses do for large vocabularies). Masked positions are
    computed but their loss and gradient are replaced by 0, so no shape depends on the mask (no host–device sync) and
    an inf/NaN logit at a padded position reaches neither. The teacher's logits are a target: they get no gradient.

    Args:
        student_logits: (..., C) student logits, e.g. (B, C) for classification or (B, T, V) per token.
        teacher_logits: (..., C) teacher logits, same shape.
        temperature: softmax temperature T; `kl` and `soft_ce` are multiplied by T² (Hinton et al., 2015).
        kind: `kl` = KL(p_T ‖ p_S), `soft_ce` = −Σ p_T log p_S, `mse` = mean squared error of the raw logits.
        mask: (...) boolean, true where a position counts; None = all positions.
        chunk_elements: logits per chunk (rounded to whole positions, at least one); None = the device's default,
            `LOGIT_CHUNK_ELEMENTS`.
        overwrite_teacher: the teacher's logits are read nowhere else: the student's gradient may be written over
            them, chunk by chunk once read (when they have the student's dtype and layout), instead of into a new
            (positions × classes) buffer — one such tensor less at the peak, and on a CPU no fresh pages to touch.
    """
    if kind not in LOGIT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, LOGIT_KINDS))}, got {kind!r}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape: logit KD compares them position by position and class by class."
        )
    classes = student_logits.shape[-1]
    student = student_logits.reshape(-1, classes)  # a view for contiguous logits
    teacher = teacher_logits.detach().reshape(-1, classes)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            positions = tuple(student_logits.shape[:-1])
            raise ValueError(f"mask {tuple(mask.shape)} does not match the logits' positions {positions}.")
        mask = mask.reshape(-1).bool()
    chunk_rows = _chunk_rows(classes, student.device, chunk_elements)
    reusable = teacher.dtype == student.dtype and teacher.is_contiguous() and teacher.data_ptr() != student.data_ptr()
    buffer = teacher if overwrite_teacher and reusable else None
    return _ChunkedLogitLoss.apply(student, teacher, mask, float(temperature), kind, chunk_rows, buffer)


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, chunk_elements: int | None = None
) -> torch.Tensor:
    """Cross-entropy of the logits against class ids, averaged over the positions whose target is not -100: what a
    transformers LM head returns as its loss, computed like `logit_kd_loss` — in fp32 chunks of positions, the
    gradient (softmax − one-hot) made in the forward pass, sync-free — so that no (positions × vocabulary) fp32
    log-probabilities, zeros or copies are ever made.

    Args:
        logits: (..., C) logits.
        targets: (...) class ids in 0..C-1, or -100 where a position does not count.
        chunk_elements: logits per chunk; None = the device's default, `LOGIT_CHUNK_ELEMENTS`.
    """
    classes = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match the logits' positions {tuple(logits.shape[:-1])}."
        )
    mask = targets.reshape(-1) != IGNORE_INDEX
    class_ids = targets.reshape(-1).clamp(min=0)  # an ignored position's id is never used
    chunk_rows = _chunk_rows(classes, logits.device, chunk_elements)
    return _ChunkedLogitLoss.apply(logits.reshape(-1, classes), class_ids, mask, 1.0, "hard", chunk_rows, None)


def _chunk_rows(classes: int, device: torch.device, chunk_elements: int | None) -> int:
    """Positions per chunk: `chunk_elements` logits (None = the device's default), at least one position."""
    if chunk_elements is None:
        chunk_elements = LOGIT_CHUNK_ELEMENTS.get(device.type, DEFAULT_LOGIT_CHUNK_ELEMENTS)
    return max(1, chunk_elements // max(classes, 1))


class _ChunkedLogitLoss(torch.autograd.Function):
    """`logit_kd_loss` over (N, C) logits: the forward pass computes each chunk's loss and its gradient for the
    student's logits (written straight into one (N, C) buffer); the backward pass only scales that gradient."""

    @staticmethod
    def forward(ctx, student, teacher, mask, temperature, kind, chunk_rows, buffer):
        needs_gradient = ctx.needs_input_grad[0]
        # A chunk's rows of `buffer` (the teacher's logits, when the caller allows it) are written only after they
        # have been read.
        gradient = (torch.empty_like(student) if buffer is None else buffer) if needs_gradient else None
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for start in range(0, student.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            keep = None if mask is None else mask[rows]
            out = None if gradient is None else gradient[rows]
            total = total + _logit_rows(student[rows], teacher[rows], temperature, kind, keep, out).sum()
        if mask is None:
            count = torch.full((), max(student.shape[0], 1), dtype=torch.float32, device=student.device)
        else:
            count = mask.sum().clamp(min=1).to(torch.float32)
        ctx.save_for_backward(gradient, count)
        ctx.gradient_used = False
        scale = 1.0 if kind == "mse" else temperature**2
        return total * scale / count

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.gradient_used:
            raise RuntimeError(
                "logit_kd_loss was backpropagated twice (retain_graph=True): its gradient buffer is scaled in place "
                "by the first backward pass. Compute the loss again for a second backward pass."
            )
        ctx.gradient_used = True
        gradient, count = ctx.saved_tensors
        # In place: a second (positions × classes) tensor would cost as much memory again (and, on a CPU, the page
        # faults of touching it).
        return gradient.mul_((grad_output / count).to(gradient.dtype)), None, None, None, None, None, None


def _logit_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    kind: str,
    keep: torch.Tensor | None,
    gradient: torch.Tensor | None,
) -> torch.Tensor:
    """The loss of each of one chunk's n positions (n,) fp32, T²-scaling left to the caller; masked positions (`keep`
    false) give 0. With `gradient` (n, C), the gradient of the T²-scaled loss for the student's logits is written into
    it (0 at masked positions). Written to make few passes over the (n, C) chunk, in place where it can."""
    student = student.float()
    if kind == "hard":  # `teacher` holds the (n,) class ids
        log_probs = F.log_softmax(student, dim=-1)
        per_row = -log_probs.gather(-1, teacher[:, None]).squeeze(-1)
        if gradient is not None:  # softmax − one-hot
            in_place = gradient.dtype == torch.float32
            student_gradient = torch.exp(log_probs, out=gradient) if in_place else log_probs.exp_()
            student_gradient.scatter_add_(-1, teacher[:, None], torch.full_like(per_row[:, None], -1.0))
            if not in_place:
                gradient.copy_(student_gradient)
        return _kept(per_row, keep, gradient)
    teacher = teacher.float()
    if kind == "mse":
        difference = student - teacher
        per_row = difference.pow(2).mean(-1)
        if gradient is not None:
            gradient.copy_(difference.mul_(2.0 / student.shape[-1]))
    else:
        if temperature != 1.0:
            student, teacher = student / temperature, teacher / temperature
        student_log_probs = F.log_softmax(student, dim=-1)
        teacher_log_probs = F.log_softmax(teacher, dim=-1)
        teacher_probs = teacher_log_probs.exp()
        if kind == "kl":  # as F.kl_div(log_target=True) computes it
            per_row = (teacher_probs * (teacher_log_probs - student_log_probs)).sum(-1)
        else:
            per_row = -(teacher_probs * student_log_probs).sum(-1)
        if gradient is not None:
            # d/ds of T²·KL(p_T ‖ p_S) and of T²·CE(p_T, p_S) alike: T·(p_S − p_T), since Σ p_T = 1. Made in the
            # buffer itself when it is fp32 (no chunk-sized copy), else in the chunk's fp32 and cast into it.
            in_place = gradient.dtype == torch.float32
            student_gradient = torch.exp(student_log_probs, out=gradient) if in_place else student_log_probs.exp_()
            student_gradient.sub_(teacher_probs)
            if temperature != 1.0:
                student_gradient.mul_(temperature)
            if not in_place:
                gradient.copy_(student_gradient)
    return _kept(per_row, keep, gradient)


def _kept(per_row: torch.Tensor, keep: torch.Tensor | None, gradient: torch.Tensor | None) -> torch.Tensor:
    """`per_row` with masked positions' losses (and their rows of `gradient`) set to 0."""
    if keep is None:
        return per_row
    if gradient is not None:
        gradient.masked_fill_(~keep[:, None], 0.0)
    return torch.where(keep, per_row, 0.0)  # a masked position's loss may be inf or NaN: replaced, not multiplied


def teacher_mixture_logits(
    teacher_logits: list[torch.Tensor], weights: list[float], temperature: float = 1.0, kind: str = "kl"
) -> torch.Tensor:
    """Logits that stand for several teachers in `logit_kd_loss`.

    For `kl` and `soft_ce`: z = T·log Σᵢ wᵢ·softmax(tᵢ/T), whose tempered softmax softmax(z/T) is the weighted
    mixture of the teachers' tempered distributions, so `logit_kd_loss(s, z, T, kind)` = KL(Σᵢ wᵢ·softmax(tᵢ/T) ‖
    softmax(s/T))·T². For `mse`: the weighted mean Σᵢ wᵢ·tᵢ, whose squared distance to the student differs from
    Σᵢ wᵢ·‖s − tᵢ‖² by a constant (the same gradients).

    Args:
        teacher_logits: one (..., C) tensor per teacher, all of one shape.
        weights: one weight >= 0 per teacher, summing to 1; a teacher of weight 0 is left out.
        temperature: the softmax temperature T of the loss.
        kind: the `logit_kd_loss` kind the logits are for.
    Returns (..., C) fp32 logits; a single teacher's logits come back unchanged.
    """
    if len(teacher_logits) != len(weights):
        raise ValueError(f"{len(teacher_logits)} teachers' logits but {len(weights)} weights.")
    if len(teacher_logits) == 1:
        return teacher_logits[0]
    weighted = [(weight, logits.float()) for weight, logits in zip(weights, teacher_logits, strict=True) if weight > 0]
    if kind == "mse":
        return sum(weight * logits for weight, logits in weighted)
    log_mixture = torch.logsumexp(
        torch.stack([F.log_softmax(logits / temperature, dim=-1) + math.log(weight) for weight, logits in weighted]),
        dim=0,
    )
    return temperature * log_mixture


def sparse_logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_rest: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "kl",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit distillation against a teacher kept as its top-k logits (`nlpkd.teacher_cache`), averaged over the
    valid positions.

    The missing mass: each side becomes k + 1 buckets — the k classes of the teacher's top-k and one "rest" bucket
    that merges every other class, with the logsumexp of their logits as its logit. The teacher's rest logit is
    stored with its top-k; the student's is the logsumexp of its logits outside the teacher's top-k indices, which
    stays exact when its rest mass is tiny (1 − Σ top-k probabilities would round to 0). Both bucket vectors are
    then divided by T and compared as `logit_kd_loss` compares logits (T²-scaled for `kl` and `soft_ce`). So at
    T = 1 the buckets hold exactly the top-k probabilities of the full softmax and the remaining probability;
    at T ≠ 1 the rest is tempered as one merged class, the same way on both sides (identical logits give 0 at any T).
    When k equals the number of classes there is no rest bucket and the loss equals `logit_kd_loss` exactly.

    Args:
        student_logits: (..., C) student logits.
        teacher_values: (..., k) the teacher's top-k logits (any float dtype; computed in fp32).
        teacher_indices: (..., k) their class ids in 0..C-1, distinct per position.
        teacher_rest: (...) logsumexp of the teacher's logits outside its top-k (unused when k = C).
        temperature: softmax temperature T.
        kind: `kl` = KL(p_T ‖ p_S) or `soft_ce` = −Σ p_T log p_S over the buckets. `mse` compares every raw logit,
            which the top-k does not hold: refused.
        mask: (...) boolean, true where a position counts; None = all positions.
    """
    if kind not in ("kl", "soft_ce"):
        raise ValueError(
            f"kind must be 'kl' or 'soft_ce' with a top-k teacher, got {kind!r}: 'mse' compares every raw logit and "
            "the cache keeps only the top k."
        )
    num_classes, top_k = student_logits.shape[-1], teacher_indices.shape[-1]
    if top_k > num_classes:
        raise ValueError(f"The teacher's top-k has k={top_k} entries but the student has only {num_classes} classes.")
    student_logits, indices = student_logits.float(), teacher_indices.long()
    student_buckets, teacher_buckets = student_logits.gather(-1, indices), teacher_values.float()
    if top_k < num_classes:
        student_rest = student_logits.scatter(-1, indices, float("-inf")).logsumexp(-1, keepdim=True)
        student_buckets = torch.cat([student_buckets, student_rest], dim=-1)
        teacher_buckets = torch.cat([teacher_buckets, teacher_rest.float().unsqueeze(-1)], dim=-1)
    return logit_kd_loss(student_buckets, teacher_buckets, temperature, kind, mask)


def hidden_mse_loss(
    student_hidden: torch.Tensor | Sequence[torch.Tensor],
    teacher_hidden: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between hidden states over non-padding tokens.

    Computed layer by layer with the gradient for the student's states made in the forward pass: no stacked copy of
    the layers, and padding states (possibly inf in fp16) are replaced, not multiplied, by 0 on both sides, so they
    add 0 and pass no gradient.

    Args:
        student_hidden: (B, T, D) student states, already projected to the teacher's width D; or several layers'
            states, as a sequence of (B, T, D) tensors or one (..., B, T, D) tensor, averaged over too.
        teacher_hidden: the teacher's states, laid out as `student_hidden`.
        mask: (B, T) attention mask (1 = token, 0 = padding); None = all tokens.
    """
    students, teachers = _layer_list(student_hidden), _layer_list(teacher_hidden)
    if len(students) != len(teachers):
        raise ValueError(f"{len(students)} student layers against {len(teachers)} teacher layers.")
    first = students[0]
    keep = None if mask is None else mask.bool()
    count = first.shape[-1] * len(students) * (first[..., 0].numel() if keep is None else keep.sum())
    count = torch.as_tensor(count, dtype=torch.float32, device=first.device).clamp(min=1)
    return _HiddenMSE.apply(keep, count, len(students), *students, *(t.detach() for t in teachers))


def _layer_list(states: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(states, torch.Tensor):
        return list(states.reshape(-1, *states.shape[-3:]).unbind(0)) if states.dim() > 3 else [states]
    return list(states)


class _HiddenMSE(torch.autograd.Function):
    """Σ over layers and real tokens of ‖s − t‖² / count; each layer's gradient 2·(s − t) is made in the forward
    pass."""

    @staticmethod
    def forward(ctx, keep, count, layers, *states):
        students, teachers = states[:layers], states[layers:]
        total = torch.zeros((), dtype=torch.float32, device=count.device)
        gradients = []
        for student, teacher in zip(students, teachers, strict=True):
            difference = student.float() - teacher.float()
            if keep is not None:
                difference.masked_fill_(~keep[..., None], 0.0)
            total = total + difference.pow(2).sum()
            if ctx.needs_input_grad[3 + len(gradients)]:
                gradients.append(difference.mul_(2.0).to(student.dtype))
            else:
                gradients.append(None)
        ctx.save_for_backward(count, *(g for g in gradients if g is not None))
        ctx.has_gradient = [g is not None for g in gradients]
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        count, *saved = ctx.saved_tensors
        scale = grad_output / count
        saved = iter(saved)
        gradients = [next(saved) * scale if has else None for has in ctx.has_gradient]
        return None, None, None, *gradients, *([None] * len(gradients))


def attention_scores_mse_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """TinyBERT's attention loss: MSE between pre-softmax scores Q·Kᵀ/√d over valid query–key pairs.

    Args:
        student_scores: (..., B, H, T, S) student scores (S = T for self-attention, the source length for
            cross-attention; leading dims, e.g. stacked layers, are averaged over too).
        teacher_scores: (..., B, H, T, S) teacher scores, same head count.
        mask: (B, T) attention mask; a pair (i, j) counts when tokens i and j are both real. None = all tokens.
        causal: only pairs with key j <= query i count (the scores a causal model's softmax sees).
        key_mask: (B, S) mask of the keys when they are other tokens than the queries (cross-attention).
    """
    difference = student_scores.float() - teacher_scores.float()
    pairs = pair_mask(mask, difference.shape[-1], causal, difference.device, key_mask)
    if pairs is not None:
        # Zeroed before squaring: the gradient of an inf difference squared is NaN even when multiplied by 0.
        difference = torch.where(pairs, difference, 0.0)
    return _masked_mean(difference.pow(2), pairs)


def attention_mse_from_projections(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None = None,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`attention_scores_mse_loss` of the scores Q·Kᵀ, computed from the scaled queries and the keys.

    The padded queries and keys are set to 0 on both sides before the products, so every pair with a padded token
    scores 0 − 0: the squared differences are summed over the whole grid (lower triangle when `causal`), chunk by
    chunk (`_ChunkedScoresMSE`), and divided by the count of real pairs — no (B, 1, T, S) pair mask, no masking pass
    over the scores, and no whole (..., T, S) scores tensor.

    Args:
        student: (queries (..., B, H, T, d) already multiplied by the score scale, keys (..., B, H, S, d)).
        teacher: the same for the teacher (same H and T, S; its own d).
        mask: (B, T) mask of the queries (and of the keys, for self-attention); None = all tokens.
        causal: only pairs with key j <= query i count.
        key_mask: (B, S) mask of the keys when they are other tokens than the queries (cross-attention).
    """
    (student_queries, student_keys), (teacher_queries, teacher_keys) = student, teacher
    if key_mask is None:
        key_mask = mask
    if mask is not None:
        queries = mask.bool()[:, None, :, None]
        student_queries = torch.where(queries, student_queries.float(), 0.0)
        teacher_queries = torch.where(queries, teacher_queries.float(), 0.0)
    if key_mask is not None:
        keys = key_mask.bool()[:, None, :, None]
        student_keys = torch.where(keys, student_keys.float(), 0.0)
        teacher_keys = torch.where(keys, teacher_keys.float(), 0.0)
    # (where() above already gave fp32; these upcast the unmasked case)
    student_queries, student_keys = student_queries.float(), student_keys.float()
    teacher_queries, teacher_keys = teacher_queries.detach().float(), teacher_keys.detach().float()
    count = _pair_count(student_queries.shape, student_keys.shape[-2], mask, causal, key_mask, student_queries.device)
    with torch.autocast(student_queries.device.type, enabled=False):  # the products in fp32 under bf16 autocast
        return _ChunkedScoresMSE.apply(student_queries, student_keys, teacher_queries, teacher_keys, causal, count)


# Score entries per chunk of the attention MSE, by device type, on LOGIT_CHUNK_ELEMENTS' reasoning (not timed apart):
# a chunk's scores and their difference (1 MiB each) stay in a CPU core's cache; elsewhere 64 MiB each, so that the
# 4 x 32 x 12 mapped-layer grids of a batch 32 x 128 take 2 chunks.
SCORE_CHUNK_ELEMENTS = {"cpu": 2**18}
DEFAULT_SCORE_CHUNK_ELEMENTS = 2**24


class _ChunkedScoresMSE(torch.autograd.Function):
    """Σ over the (T, S) grids of (Q_s·K_sᵀ − Q_t·K_tᵀ)² (lower triangle when causal) / count, over chunks of the
    flattened leading dims (layers × batch × heads): no (…, T, S) scores tensor is ever whole, and the gradients for
    the student's queries and keys, 2·D·K_s and 2·Dᵀ·Q_s of each chunk's difference D, are made in the forward pass
    into (…, T, d) buffers; backward only scales them."""

    @staticmethod
    def forward(ctx, student_queries, student_keys, teacher_queries, teacher_keys, causal, count):
        shape_q, shape_k = student_queries.shape, student_keys.shape
        length, keys = shape_q[-2], shape_k[-2]
        student_queries = student_queries.reshape(-1, length, shape_q[-1])
        student_keys = student_keys.reshape(-1, keys, shape_k[-1])
        teacher_queries = teacher_queries.reshape(-1, length, teacher_queries.shape[-1])
        teacher_keys = teacher_keys.reshape(-1, keys, teacher_keys.shape[-1])
        needs_gradient = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        query_gradient = torch.empty_like(student_queries) if needs_gradient else None
        key_gradient = torch.empty_like(student_keys) if needs_gradient else None
        elements = SCORE_CHUNK_ELEMENTS.get(student_queries.device.type, DEFAULT_SCORE_CHUNK_ELEMENTS)
        chunk = max(1, elements // (length * keys))
        total = torch.zeros((), dtype=torch.float32, device=student_queries.device)
        for start in range(0, student_queries.shape[0], chunk):
            grids = slice(start, start + chunk)
            difference = torch.bmm(student_queries[grids], student_keys[grids].transpose(1, 2))
            difference.sub_(torch.bmm(teacher_queries[grids], teacher_keys[grids].transpose(1, 2)))
            if causal:
                difference.tril_()
            total = total + difference.pow(2).sum()
            if needs_gradient:
                difference.mul_(2.0)
                torch.bmm(difference, student_keys[grids], out=query_gradient[grids])
                torch.bmm(difference.transpose(1, 2), student_queries[grids], out=key_gradient[grids])
        ctx.save_for_backward(query_gradient, key_gradient, count)
        ctx.shapes, ctx.gradient_used = (shape_q, shape_k), False
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.gradient_used:
            raise RuntimeError(
                "The attention MSE was backpropagated twice (retain_graph=True): its gradient buffers are scaled in "
                "place by the first backward pass. Compute the loss again for a second backward pass."
            )
        ctx.gradient_used = True
        query_gradient, key_gradient, count = ctx.saved_tensors
        scale = grad_output / count
        shape_q, shape_k = ctx.shapes
        return query_gradient.mul_(scale).view(shape_q), key_gradient.mul_(scale).view(shape_k), None, None, None, None


def _pair_count(
    query_shape: torch.Size,
    keys: int,
    mask: torch.Tensor | None,
    causal: bool,
    key_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """How many entries of the (..., B, H, T, S) scores of queries shaped `query_shape` (..., B, H, T, d) and `keys`
    keys are real pairs (at least 1), from per-row token counts: n·s pairs for n real queries and s real keys,
    n(n + 1)/2 under `causal` (whatever the padding's side)."""
    batch, length = query_shape[-4], query_shape[-2]
    per_pair = math.prod(query_shape[:-2]) // batch  # heads × leading dims
    queries = torch.full((batch,), length, device=device) if mask is None else mask.sum(-1)
    if causal:
        pairs = (queries * (queries + 1) // 2).sum()
    else:
        real_keys = torch.full((batch,), keys, device=device) if key_mask is None else key_mask.sum(-1)
        pairs = (queries * real_keys).sum()
    return (pairs * per_pair).clamp(min=1).to(torch.float32)


def attention_kl_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher ‖ student) between attention distributions, per query row, over real keys.

    Args:
        student_scores: (..., B, Hs, T, S) student pre-softmax scores (leading dims, e.g. stacked layers, are averaged
            over too).
        teacher_scores: (..., B, Ht, T, S) teacher pre-softmax scores. When Hs ≠ Ht both sides are averaged over
            heads.
        mask: (B, T) attention mask: padded keys get no probability, padded query rows do not count.
        causal: keys after the query get no probability either, as in a causal model's softmax.
        key_mask: (B, S) mask of the keys when they are other tokens than the queries (cross-attention).
    """
    student_scores, teacher_scores = student_scores.float(), teacher_scores.float()
    if mask is not None or causal or key_mask is not None:
        # finfo.min rather than -inf: a row with no real key stays finite, and it is excluded below anyway.
        hidden_keys = ~pair_mask(mask, student_scores.shape[-1], causal, student_scores.device, key_mask)
        student_scores = student_scores.masked_fill(hidden_keys, torch.finfo(torch.float32).min)
        teacher_scores = teacher_scores.masked_fill(hidden_keys, torch.finfo(torch.float32).min)
    student_log_probs = F.log_softmax(student_scores, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_scores, dim=-1)
    if student_scores.shape[-3] != teacher_scores.shape[-3]:
        student_log_probs = student_log_probs.exp().mean(-3, keepdim=True).clamp_min(1e-30).log()
        teacher_log_probs = teacher_log_probs.exp().mean(-3, keepdim=True).clamp_min(1e-30).log()
    per_row = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none")
    per_row = per_row.sum(-1)  # (..., B, H, T)
    return _masked_mean(per_row, None if mask is None else mask.bool()[:, None, :])


def relation_scores(states: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLMv2's self-relation scores: `states` (B, T, W) split into `heads` relation heads of width d = W / heads,
    x_r·x_rᵀ/√d per head: (B, heads, T, T) fp32."""
    batch, length, width = states.shape
    split = states.float().view(batch, length, heads, width // heads).transpose(1, 2)  # (B, R, T, d)
    return (split @ split.transpose(-1, -2)) * (width // heads) ** -0.5


def relation_kl_loss(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    heads: int,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation loss: Σ over the (query, key, value) relations of the KL between
    the teacher's and the student's relation distributions softmax(x_r·x_rᵀ/√d), per relation head and query row,
    over real (and, when `causal`, not later) keys, averaged over heads and real query rows.

    Args:
        student: the student's (queries, keys, values) of one layer, each (B, T, Ws); Ws divisible by `heads`.
        teacher: the teacher's, each (B, T, Wt); widths and head counts need not match the student's.
        heads: the number of relation heads both sides are split into.
        mask: (B, T) attention mask.
    """
    return sum(
        attention_kl_loss(relation_scores(s, heads), relation_scores(t, heads), mask, causal)
        for s, t in zip(student, teacher, strict=True)
    )


def pair_mask(
    mask: torch.Tensor | None,
    length: int,
    causal: bool = False,
    device: torch.device | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """(B, T) token mask -> (B, 1, T, T) mask of the query–key pairs whose tokens are both real and, when `causal`,
    whose key is not after the query. None when every pair counts.

    With `key_mask` (B, S), the keys are other tokens than the queries (cross-attention: decoder queries, encoder
    keys): the result is (B, 1, T, S), `mask` masks the queries and `length` is unused."""
    if key_mask is not None:
        key_mask = key_mask.bool()
        queries = torch.ones_like(key_mask[:, :1]) if mask is None else mask.bool()
        return (queries[:, :, None] & key_mask[:, None, :])[:, None]
    pairs = None
    if mask is not None:
        mask = mask.bool()
        pairs = (mask[:, :, None] & mask[:, None, :])[:, None]
    if causal:
        lower = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        pairs = lower if pairs is None else pairs & lower
    return pairs
