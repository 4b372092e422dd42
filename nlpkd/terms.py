"""Distillation loss terms: each loss in the total is one term object, and the trainer only runs what the enabled
terms need and sums weight × loss × scale over them (see `DistillationMixin.compute_loss`).

A term has
- `name`: its log key (`hard_loss`, `logit_loss`, `hidden_loss`, `encoder_attention_loss`, ...),
- `weight`: its weight in the total: its argument field (`hard_label_weight`, `logit_weight`, `hidden_weight`,
  `attention_weight`, `relation_weight`) times its share (a seq2seq stack's weight, a teacher's `teacher_weights`
  entry),
- `count`: the `positions.batch_counts` key that normalises it over an optimizer step,
- `loss(view)`: a pure function of one `BatchView`, the batch's mean over the positions it counts,
- `group`: `prediction` or `layers`, whose scale a loss schedule sets (`nlpkd.schedules`).
What a term asks of the forward passes is read off its type: `HiddenTerm` needs the student's projected hidden
states and its teacher's hidden states, `AttentionTerm` and `RelationTerm` read what their captures record during the
forward passes (the trainer keeps both kinds in `attention_terms`), and every term with a `teacher` index needs that
teacher run.

A new loss is one term class here (or a new instance of one), its weight field in `DistillationArguments`, and the
line that adds it in `output_terms` or the trainer's `_layer_terms`; nothing else in the trainer changes.

An encoder-only or decoder-only model has one stack: `hidden_loss` and `attention_loss`. A seq2seq model has three:
the encoder (`encoder_hidden_loss`, `encoder_attention_loss`), the decoder (`decoder_hidden_loss`,
`decoder_attention_loss`, causal) and the decoder's cross-attention (`cross_attention_loss`: decoder queries against
encoder keys), each with its own layer map. With several teachers, each layer-wise term exists once per teacher and
its name ends in `_teacher{i}` (i = the teacher's place in `teacher_model`, from 0).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.utils import ModelOutput

from .capture import AttentionCapture, find_layers, stack_layer_list
from .losses import (
    attention_kl_loss,
    attention_mse_from_projections,
    hidden_mse_loss,
    logit_kd_loss,
    relation_kl_loss,
    sparse_logit_kd_loss,
    teacher_mixture_logits,
    token_cross_entropy,
)
from .positions import IGNORE_INDEX, distilled_rows, label_grid, logit_grid, side_mask
from .teacher_cache import CACHE_ROW, TeacherCache


@dataclass(frozen=True)
class BatchView:
    """What the terms read of one batch."""

    inputs: dict  # the batch as the trainer prepared it: features, labels, masks, teacher-cache rows
    student: ModelOutput  # the student's outputs
    projected: dict[str, tuple[torch.Tensor, ...]]  # hidden term name -> student states at its teacher's width
    teachers: tuple[ModelOutput | None, ...]  # each teacher's outputs (None: not run, e.g. with the cache)


# ---- the prediction layer: hard labels and logits ----


@dataclass(frozen=True)
class HardTerm:
    """The student's own task loss on the labels (its model's `loss` output)."""

    group: ClassVar[str] = "prediction"  # its schedule group (nlpkd.schedules)

    weight: float
    level: str  # positions.logit_level of the student
    label_names: tuple[str, ...]
    name: str = "hard_loss"
    count: str = "labels"

    def loss(self, view: BatchView) -> torch.Tensor:
        outputs = view.student
        labels = view.inputs.get("labels")
        if outputs.loss is None and labels is not None and self.level != "sequence":
            # The trainer ran a token-level student without its labels, having checked once that its loss is the
            # plain cross-entropy: the same loss, chunked, without the (positions × vocabulary) buffers.
            return token_cross_entropy(outputs.logits, label_grid(labels, self.level))
        if outputs.loss is None:
            raise ValueError(
                f"hard_label_weight={self.weight} but the student returned no loss: the batch has no "
                f"{list(self.label_names)}. Add labels to the dataset, or set hard_label_weight=0."
            )
        if labels.is_floating_point():  # regression targets: no ignored label
            return outputs.loss
        # A micro-batch whose labels are all ignored (padding, or augmented rows that only the teacher labels) gives
        # NaN from a mean loss; it holds no label to learn. Chosen on the device: the host never reads the labels.
        return torch.where((labels != IGNORE_INDEX).any(), outputs.loss, 0.0)


@dataclass(frozen=True)
class LogitTerm:
    """Logit KD (Hinton et al.) against the teachers run online, over the positions that carry a prediction (see
    `positions.logit_grid`): KL(Σᵢ wᵢ·softmax(tᵢ/T) ‖ softmax(s/T))·T² for `kl` (one teacher: w = 1), see
    `losses.teacher_mixture_logits` for `soft_ce` and `mse`."""

    group: ClassVar[str] = "prediction"  # its schedule group (nlpkd.schedules)

    weight: float
    level: str
    temperature: float
    kind: str  # logit_loss
    teachers: tuple[int, ...]  # the teachers of weight > 0
    teacher_weights: tuple[float, ...]  # theirs, summing to 1
    name: str = "logit_loss"
    count: str = "logits"

    def loss(self, view: BatchView) -> torch.Tensor:
        student, mask = logit_grid(view.inputs, view.student.logits, self.level)
        teachers = [logit_grid(view.inputs, view.teachers[i].logits, self.level)[0] for i in self.teachers]
        teacher = teacher_mixture_logits(teachers, list(self.teacher_weights), self.temperature, self.kind)
        # Nothing reads the teachers' logits after this term (nor a mixture made here): the student's gradient may
        # take their memory.
        return logit_kd_loss(student, teacher, self.temperature, self.kind, mask, overwrite_teacher=True)


@dataclass(frozen=True)
class CachedLogitTerm:
    """Logit KD against the teacher(s)' top-k logits cached for this batch's rows (`nlpkd.teacher_cache`), over the
    same positions as `LogitTerm`; the teachers never run."""

    group: ClassVar[str] = "prediction"  # its schedule group (nlpkd.schedules)

    weight: float
    level: str
    temperature: float
    kind: str
    cache: TeacherCache
    name: str = "logit_loss"
    count: str = "logits"

    def loss(self, view: BatchView) -> torch.Tensor:
        rows = view.inputs.get(CACHE_ROW)
        if rows is None:
            raise ValueError(
                f"This batch has no {CACHE_ROW}, so the teacher_logits_cache_dir cache holds no logits for it: only "
                "the training set is cached. Evaluate on data with labels (the student's own loss), or set "
                "teacher_logits_cache_dir=None to run the teacher online."
            )
        values, indices, rest, cached_counts = self.cache.lookup(rows.tolist())
        student, counts = distilled_rows(view.inputs, view.student.logits, self.level)
        counts = counts.cpu()
        if not torch.equal(counts, cached_counts):
            raise ValueError(
                f"The cache at {self.cache.path} holds {cached_counts.tolist()} positions for rows "
                f"{rows.tolist()}, but this batch distils {counts.tolist()}: the labels differ from those the cache "
                "was built with (does the collator draw them at random?). Set teacher_logits_cache_dir=None to run "
                "the teacher online."
            )
        device = student.device
        return sparse_logit_kd_loss(
            student,
            values.to(device),
            indices.to(device),
            rest.to(device),
            self.temperature,
            self.kind,
        )


def output_terms(args, level: str, label_names: list[str], teacher_weights: list[float], cache) -> list:
    """The prediction-layer terms that `args` switches on: the hard loss, and logit KD online or from `cache`."""
    terms = []
    if args.hard_label_weight > 0:
        terms.append(HardTerm(args.hard_label_weight, level, tuple(label_names)))
    if args.logit_weight > 0 and cache is not None:
        terms.append(CachedLogitTerm(args.logit_weight, level, args.temperature, args.logit_loss, cache))
    elif args.logit_weight > 0:
        teachers = tuple(i for i, weight in enumerate(teacher_weights) if weight > 0)
        shares = tuple(teacher_weights[i] for i in teachers)
        terms.append(LogitTerm(args.logit_weight, level, args.temperature, args.logit_loss, teachers, shares))
    return terms


# ---- the layers: hidden states and attention maps ----


@dataclass(frozen=True)
class HiddenTerm:
    """MSE between projected student states and the mapped teacher states (embeddings map 0 -> 0)."""

    group: ClassVar[str] = "layers"  # its schedule group (nlpkd.schedules)

    name: str
    outputs: str  # the model output holding the stack's states: hidden_states, encoder_/decoder_hidden_states
    layer_map: list[int]  # entry m-1: the teacher layer student layer m learns from
    side: str  # "source" or "target": whose real positions count (see positions.side_mask)
    count: str
    weight: float
    teacher: int = 0  # the teacher's place in teacher_model

    def loss(self, view: BatchView) -> torch.Tensor:
        teacher_states = getattr(view.teachers[self.teacher], self.outputs)
        # Every layer counts the same tokens: the mean over all layers is the mean of the per-layer means.
        teacher = [teacher_states[layer] for layer in (0, *self.layer_map)]
        return hidden_mse_loss(view.projected[self.name], teacher, side_mask(view.inputs, self.side))


@dataclass(frozen=True)
class AttentionTerm:
    """Attention-map loss between the captured scores of mapped layers."""

    group: ClassVar[str] = "layers"  # its schedule group (nlpkd.schedules)

    name: str
    student_capture: AttentionCapture
    teacher_capture: AttentionCapture
    layer_map: list[int]
    queries: str  # side of the queries
    keys: str | None  # side of the keys when they differ from the queries' (cross-attention)
    causal: bool
    kind: str  # attention_loss
    count: str  # pairs for `mse`, query rows for the per-row `kl`
    weight: float
    teacher: int = 0

    def loss(self, view: BatchView) -> torch.Tensor:
        inputs = view.inputs
        query_mask = side_mask(inputs, self.queries)
        key_mask = None if self.keys is None else side_mask(inputs, self.keys)
        if self.keys is not None and key_mask is None:  # no attention mask: every source token is a real key
            key_mask = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        # All mapped layers at once, stacked (L, B, H, T, ·); every layer counts the same pairs (or query rows), so
        # the mean over the stack is the mean of the per-layer losses.
        student_layers = list(range(1, len(self.layer_map) + 1))
        if self.kind == "mse":
            return attention_mse_from_projections(
                self.student_capture.stacked_query_key(student_layers),
                self.teacher_capture.stacked_query_key(self.layer_map),
                query_mask,
                self.causal,
                key_mask,
            )
        return attention_kl_loss(
            self.student_capture.stacked_scores(student_layers),
            self.teacher_capture.stacked_scores(self.layer_map),
            query_mask,
            self.causal,
            key_mask,
        )


@dataclass(frozen=True)
class TeacherShare:
    """Which teacher a set of layer-wise terms learns from, with which weight, under which name suffix."""

    index: int = 0
    weight: float = 1.0
    suffix: str = ""  # "" for a single teacher, else "_teacher{index}"


@dataclass(frozen=True)
class RelationTerm:
    """MiniLMv2's multi-head self-attention relations (Q-Q, K-K, V-V) of one teacher layer against one student layer,
    each side split into `heads` relation heads: no projections, and widths and head counts need not match."""

    group: ClassVar[str] = "layers"

    name: str
    student_capture: AttentionCapture  # made with values=True
    teacher_capture: AttentionCapture
    student_layer: int
    teacher_layer: int
    heads: int
    causal: bool
    count: str
    weight: float
    teacher: int = 0

    def loss(self, view: BatchView) -> torch.Tensor:
        student = self.student_capture.projections(self.student_layer)
        teacher = self.teacher_capture.projections(self.teacher_layer)
        return relation_kl_loss(student, teacher, self.heads, side_mask(view.inputs, "source"), self.causal)


def relation_term(student, teacher, args, share: TeacherShare) -> RelationTerm:
    """The relation term of an encoder-only or decoder-only pair: the student's last layer against
    `relation_teacher_layer` (default: the teacher's last), in `relation_heads` heads (default: the teacher's)."""
    student_layer = len(find_layers(student))
    teacher_depth = len(find_layers(teacher))
    teacher_layer = args.relation_teacher_layer or teacher_depth
    if not 1 <= teacher_layer <= teacher_depth:
        raise ValueError(
            f"relation_teacher_layer={teacher_layer}, but the teacher has layers 1..{teacher_depth}: pick one of them "
            "(MiniLMv2 uses an upper-middle one for large teachers, the last for base-size ones)."
        )
    heads = args.relation_heads or teacher.config.num_attention_heads
    widths = {"student": student.config.hidden_size, "teacher": teacher.config.hidden_size}
    if any(width % heads for width in widths.values()):
        raise ValueError(
            f"relation_heads={heads} must divide both widths {widths}: each side's queries, keys and values are "
            "split into that many relation heads. Pick a common divisor."
        )
    student_capture = AttentionCapture(student, [student_layer], values=True)
    teacher_capture = AttentionCapture(teacher, [teacher_layer], values=True)
    return RelationTerm(
        f"relation_loss{share.suffix}",
        student_capture,
        teacher_capture,
        student_layer,
        teacher_layer,
        heads,
        student_capture.causal,
        "tokens",
        args.relation_weight * share.weight,
        share.index,
    )


def single_stack_terms(student, teacher, layer_map: list[int], args, share: TeacherShare) -> tuple[list, list]:
    """The layer-wise terms of an encoder-only or decoder-only pair that `args` switches on: (hidden-state terms,
    capture terms — attention maps and MiniLMv2 relations)."""
    hidden_terms, attention_terms = [], []
    if args.hidden_weight > 0:
        weight = args.hidden_weight * share.weight
        name = f"hidden_loss{share.suffix}"
        hidden_terms.append(HiddenTerm(name, "hidden_states", layer_map, "source", "tokens", weight, share.index))
    if args.attention_weight > 0:
        student_capture = AttentionCapture(student, list(range(1, len(layer_map) + 1)))
        teacher_capture = AttentionCapture(teacher, layer_map)
        count = "pairs" if args.attention_loss == "mse" else "tokens"
        attention_terms.append(
            AttentionTerm(
                f"attention_loss{share.suffix}",
                student_capture,
                teacher_capture,
                layer_map,
                "source",
                None,
                student_capture.causal,
                args.attention_loss,
                count,
                args.attention_weight * share.weight,
                share.index,
            )  # fmt: skip
        )
    if args.relation_weight > 0:
        attention_terms.append(relation_term(student, teacher, args, share))
    return hidden_terms, attention_terms


def seq2seq_terms(student, teacher, maps: dict[str, list[int]], args, share: TeacherShare) -> tuple[list, list]:
    """The layer-wise terms of an encoder-decoder pair; `maps` holds the `encoder` and `decoder` layer maps (the
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
            weight = args.hidden_weight * weights[stack] * share.weight
            term = HiddenTerm(
                f"{stack}_hidden_loss{share.suffix}",
                f"{stack}_hidden_states",
                maps[stack],
                side,
                count,
                weight,
                share.index,
            )
            hidden_terms.append(term)
    if args.attention_weight == 0:
        return hidden_terms, attention_terms
    specs = (
        ("encoder_attention_loss", "encoder", "source", None, False, "pairs", "tokens"),
        ("decoder_attention_loss", "decoder", "target", None, True, "target_pairs", "target_tokens"),
        ("cross_attention_loss", "cross", "target", "source", False, "cross_pairs", "target_tokens"),
    )
    for name, weight_key, queries, keys, causal, pairs, rows in specs:
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
                f"{name}{share.suffix}",
                student_capture,
                teacher_capture,
                layer_map,
                queries,
                keys,
                causal,
                args.attention_loss,
                pairs if args.attention_loss == "mse" else rows,
                args.attention_weight * weights[weight_key] * share.weight,
                share.index,
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
