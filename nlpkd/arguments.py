"""Training arguments for distillation: `TrainingArguments` plus what the teacher should teach."""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.trainer_utils import HubStrategy

from .schedules import SCHEDULES, TEMPERATURE_SCHEDULES

LOGIT_LOSSES = ("kl", "mse", "soft_ce")
ATTENTION_LOSSES = ("mse", "kl")
LOSS_WEIGHTS = ("hard_label_weight", "logit_weight", "hidden_weight", "attention_weight", "relation_weight")


@dataclass
class DistillationArguments(TrainingArguments):
    r"""
    [`TrainingArguments`] for [`DistillationTrainer`]. The total loss is

        hard_label_weight * hard_loss + logit_weight * logit_loss + hidden_weight * hidden_loss
        + attention_weight * attention_loss

    and a term whose weight is 0 is neither computed nor asked of the models. With `push_to_hub`, the student alone
    goes to the Hub (weights, config, tokenizer, model card, plots), so the hub strategies that upload whole
    checkpoints (`checkpoint`, `all_checkpoints`) are refused.

    Parameters:
        temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature T of logit distillation; the `kl` and `soft_ce` losses are scaled by T².
        hard_label_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the student's own task loss on the labels.
        logit_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the logit (prediction-layer) distillation loss.
        hidden_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the hidden-state loss: MSE between the projected student states and the teacher states of
            every mapped layer and of the embeddings, over non-padding tokens.
        attention_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the attention-map loss over every mapped layer and head.
        relation_weight (`float`, *optional*, defaults to `0.0`):
            Weight of MiniLMv2's self-attention relation loss: the KL between the teacher's and the student's
            Q-Q, K-K and V-V relation distributions, of `relation_teacher_layer` against the student's last layer,
            in `relation_heads` heads (no projections; widths and head counts need not match).
        relation_teacher_layer (`int`, *optional*):
            The teacher layer (1..N) the relations come from; default the last.
        relation_heads (`int`, *optional*):
            Relation heads both sides are split into; must divide both widths. Default: the teacher's head count.
        logit_loss (`str`, *optional*, defaults to `"kl"`):
            `"kl"`: KL(p_teacher ‖ p_student) at temperature T, times T² (Hinton et al.). `"soft_ce"`: cross-entropy
            against the teacher's soft targets, times T² (TinyBERT's prediction loss). `"mse"`: mean squared error
            between raw logits (temperature unused).
        attention_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"`: TinyBERT's MSE between pre-softmax attention scores Q·Kᵀ/√d (needs equal head counts).
            `"kl"`: KL between the attention distributions, per query row (head-averaged when head counts differ).
        layer_map (`list[int]`, *optional*):
            Entry m-1 is the teacher layer (1..N) that student layer m learns from; the embeddings always map 0 to 0.
            Defaults to TinyBERT's uniform map g(m) = m·N/M.
        teacher_logits_cache_dir (`str`, *optional*):
            Run the teacher once over the training set and keep its top-k logits under this folder (see
            `nlpkd.teacher_cache`); training then reads them instead of running the teacher. Only for logit KD
            (`hidden_weight` and `attention_weight` 0, `logit_loss` `kl` or `soft_ce`), not for masked LMs (their
            masks change every epoch). None (the default) runs the teacher online.
        loss_schedule (`str`, *optional*, defaults to `"constant"`):
            How the loss weights move over training (`nlpkd.schedules`): `constant`; `linear_decay` (the hidden and
            attention weights fade linearly to 0, the prediction-layer weights stay); `two_phase` (TinyBERT's two
            stages in one run: the hidden and attention losses alone until `two_phase_split` of the steps, then the
            hard and logit losses alone).
        two_phase_split (`float`, *optional*, defaults to `0.5`):
            The fraction of the optimizer steps the first phase of `two_phase` takes (0 < split < 1).
        temperature_schedule (`str`, *optional*, defaults to `"constant"`):
            The logit-KD temperature over training (`nlpkd.schedules.temperature_at`): `constant` (`temperature`
            throughout) or `linear` (from `temperature` at the start to `final_temperature` at the end).
        final_temperature (`float`, *optional*, defaults to `1.0`):
            The temperature a `linear` temperature schedule ends at (> 0).
        teacher_weights (`list[float]`, *optional*):
            With several teachers (`teacher_model=[t1, t2, ...]`), the weight of each (>= 0, normalised to sum 1;
            default equal). Logit KD learns the weighted mixture of their tempered distributions,
            KL(Σᵢ wᵢ·softmax(tᵢ/T) ‖ softmax(s/T))·T²; each teacher's hidden-state and attention terms are weighted
            by its share.
        teacher_logits_top_k (`int`, *optional*, defaults to `64`):
            How many of the teacher's largest logits the cache keeps per position; the rest is one merged class
            (see `nlpkd.losses.sparse_logit_kd_loss`). At least the number of classes keeps every logit: exact KD.
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T for logit distillation (> 0); KL and soft CE are scaled by T²."},
    )
    hard_label_weight: float = field(
        default=0.5, metadata={"help": "Weight (>= 0) of the student's own task loss on the labels."}
    )
    logit_weight: float = field(default=0.5, metadata={"help": "Weight (>= 0) of the logit distillation loss."})
    hidden_weight: float = field(
        default=0.0,
        metadata={"help": "Weight (>= 0) of the hidden-state MSE over mapped layers and embeddings (0 = off)."},
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight (>= 0) of the attention-map loss over mapped layers (0 = off)."}
    )
    relation_weight: float = field(
        default=0.0,
        metadata={"help": "Weight (>= 0) of MiniLMv2's Q-Q/K-K/V-V relation loss (0 = off)."},
    )
    relation_teacher_layer: int | None = field(
        default=None, metadata={"help": "Teacher layer (1..N) of the relation loss; default: the last."}
    )
    relation_heads: int | None = field(
        default=None, metadata={"help": "Relation heads (divides both widths); default: the teacher's head count."}
    )
    logit_loss: Literal["kl", "mse", "soft_ce"] = field(
        default="kl",
        metadata={
            "help": "Logit loss: 'kl' (Hinton, T²-scaled), 'soft_ce' (TinyBERT) or 'mse' (raw logits).",
            "choices": LOGIT_LOSSES,
        },
    )
    attention_loss: Literal["mse", "kl"] = field(
        default="mse",
        metadata={
            "help": "Attention loss: 'mse' on pre-softmax scores (TinyBERT) or 'kl' between attention distributions.",
            "choices": ATTENTION_LOSSES,
        },
    )
    layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher layer (1..N) for each student layer 1..M, e.g. '2 4 6'; default: uniform map m*N/M."
        },
    )

    loss_schedule: Literal["constant", "linear_decay", "two_phase"] = field(
        default="constant",
        metadata={
            "help": "Loss weights over training: 'constant', 'linear_decay' (hidden/attention weights fade to 0) or "
            "'two_phase' (hidden/attention losses first, then hard/logit losses).",
            "choices": SCHEDULES,
        },
    )
    two_phase_split: float = field(
        default=0.5, metadata={"help": "Fraction of the steps in two_phase's first (layer-loss) phase, in (0, 1)."}
    )
    temperature_schedule: Literal["constant", "linear"] = field(
        default="constant",
        metadata={
            "help": "Logit-KD temperature over training: 'constant' or 'linear' (temperature -> final_temperature).",
            "choices": TEMPERATURE_SCHEDULES,
        },
    )
    final_temperature: float = field(default=1.0, metadata={"help": "Where a linear temperature_schedule ends (> 0)."})
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "With several teachers, each one's weight (>= 0), e.g. '2 1'; normalised to sum 1 (default equal)."
        },
    )
    teacher_logits_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Cache the teacher's top-k logits over the training set in this folder and train from them "
            "without running the teacher (logit KD only). Default: run the teacher online."
        },
    )
    teacher_logits_top_k: int = field(
        default=64,
        metadata={"help": "Logits per position the teacher cache keeps (>= 1); the others merge into one class."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        for name in LOSS_WEIGHTS:
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}; set it to 0 to switch that loss off.")
        if all(getattr(self, name) == 0 for name in LOSS_WEIGHTS):
            raise ValueError(f"All loss weights are 0 ({', '.join(LOSS_WEIGHTS)}); set at least one of them > 0.")
        check_finite(self)
        self._check_training_basics()
        if self.logit_loss not in LOGIT_LOSSES:
            raise ValueError(f"logit_loss must be one of {LOGIT_LOSSES}, got {self.logit_loss!r}.")
        if self.attention_loss not in ATTENTION_LOSSES:
            raise ValueError(f"attention_loss must be one of {ATTENTION_LOSSES}, got {self.attention_loss!r}.")
        if self.fp16 and self.device.type == "cpu":
            raise ValueError(
                "fp16=True needs a GPU, but training would run on the CPU (no GPU found, or use_cpu=True). On a CPU "
                "use bf16=True (CPU autocast) instead, or drop fp16."
            )
        if self.push_to_hub and self.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            raise ValueError(
                f"hub_strategy={self.hub_strategy.value!r} uploads whole checkpoints to the Hub (the distillation "
                "projections, optimizer and scheduler state), but nlpkd pushes the student alone: use "
                "hub_strategy='every_save' (the student at each save) or 'end' (once, at the end), and resume from "
                "the local checkpoints."
            )
        if self.layer_map is not None:
            valid = [type(g) is int and g >= 1 for g in self.layer_map]  # bool is an int subclass: refuse it
            if not valid or not all(valid):
                raise ValueError(
                    f"layer_map must be a non-empty list of teacher layer numbers >= 1 (0 is the embeddings, which "
                    f"always map to each other), got {self.layer_map}."
                )
        if self.loss_schedule not in SCHEDULES:
            raise ValueError(f"loss_schedule must be one of {SCHEDULES}, got {self.loss_schedule!r}.")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"temperature_schedule must be one of {TEMPERATURE_SCHEDULES}, got {self.temperature_schedule!r}."
            )
        if not self.final_temperature > 0:
            raise ValueError(
                f"final_temperature must be > 0, got {self.final_temperature}; it is where a linear "
                "temperature_schedule ends."
            )
        if not 0 < self.two_phase_split < 1:
            raise ValueError(
                f"two_phase_split must be in (0, 1), got {self.two_phase_split}: it is the fraction of the steps "
                "spent on the hidden and attention losses before the prediction layer's."
            )
        if self.teacher_weights is not None:
            weights = self.teacher_weights
            if not weights or not all(type(w) in (int, float) and math.isfinite(w) and w >= 0 for w in weights):
                raise ValueError(
                    f"teacher_weights must be a non-empty list of finite numbers >= 0, one per teacher; got {weights}."
                )
            if sum(weights) == 0:
                raise ValueError(f"teacher_weights are all 0 ({weights}): give at least one teacher a weight > 0.")
        for name in ("relation_teacher_layer", "relation_heads"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or unset), got {value!r}.")
        if type(self.teacher_logits_top_k) is not int or self.teacher_logits_top_k < 1:
            raise ValueError(
                f"teacher_logits_top_k must be an integer >= 1, got {self.teacher_logits_top_k!r}; 64 keeps almost "
                "all of a large vocabulary's mass, the number of classes keeps every logit."
            )
        if self.teacher_logits_cache_dir is not None:
            self._check_teacher_cache()

    def _check_training_basics(self) -> None:
        # The Trainer takes these as they are and fails later, deep in torch or after a teacher stage has run.
        if os.path.isfile(self.output_dir):
            raise ValueError(f"output_dir={self.output_dir!r} is a file: give a folder (new or existing).")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}.")

    def _check_teacher_cache(self) -> None:
        cache = f"teacher_logits_cache_dir={self.teacher_logits_cache_dir!r}"
        if os.path.exists(self.teacher_logits_cache_dir) and not os.path.isdir(self.teacher_logits_cache_dir):
            raise ValueError(
                f"{cache} is a file, but the teacher cache is a folder (one sub-folder per teacher and data). Pass "
                "the path of a folder, new or existing, e.g. the file's name without its extension."
            )
        layer_wise = {name: getattr(self, name) for name in ("hidden_weight", "attention_weight", "relation_weight")}
        if any(value > 0 for value in layer_wise.values()):
            raise ValueError(
                f"{cache} keeps only the teacher's logits, but {layer_wise} need its hidden states or attention "
                "maps at every step. Set hidden_weight=0, attention_weight=0 and relation_weight=0, or "
                "teacher_logits_cache_dir=None to run the teacher online."
            )
        if self.logit_weight == 0:
            raise ValueError(
                f"{cache} but logit_weight=0: no loss reads the teacher's logits. Set logit_weight > 0, or "
                "teacher_logits_cache_dir=None."
            )
        if self.logit_loss == "mse":
            raise ValueError(
                f"{cache} keeps the top-k logits only, but logit_loss='mse' compares every raw logit. Use "
                "logit_loss='kl' or 'soft_ce', or teacher_logits_cache_dir=None."
            )

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(self, name) > 0 for name in LOSS_WEIGHTS if name != "hard_label_weight")


@dataclass
class Seq2SeqDistillationArguments(DistillationArguments, Seq2SeqTrainingArguments):
    r"""
    [`DistillationArguments`] and [`Seq2SeqTrainingArguments`] (`predict_with_generate`, `generation_num_beams`,
    ...) for [`Seq2SeqDistillationTrainer`]. Logit KD is word-level: the teacher reads the student's decoder inputs and
    every target position with a label is distilled. The layer-wise losses run per stack:

        hidden_loss    = encoder_weight * encoder_hidden_loss + decoder_weight * decoder_hidden_loss
        attention_loss = encoder_weight * encoder_attention_loss + decoder_weight * decoder_attention_loss
                         + cross_attention_weight * cross_attention_loss

    (each term weighted again by `hidden_weight` / `attention_weight`).

    Parameters:
        encoder_layer_map (`list[int]`, *optional*):
            Teacher encoder layer (1..N) for each student encoder layer; default uniform.
        decoder_layer_map (`list[int]`, *optional*):
            Teacher decoder layer for each student decoder layer (self- and cross-attention); default uniform.
        encoder_weight, decoder_weight, cross_attention_weight (`float`, *optional*, default `1.0`):
            Relative weights of each stack's terms; 0 switches a stack's terms off.
    """

    encoder_layer_map: list[int] | None = field(
        default=None, metadata={"help": "Teacher encoder layer for each student encoder layer; default: uniform."}
    )
    decoder_layer_map: list[int] | None = field(
        default=None, metadata={"help": "Teacher decoder layer for each student decoder layer; default: uniform."}
    )
    encoder_weight: float = field(
        default=1.0, metadata={"help": "Weight (>= 0) of the encoder's hidden-state and attention terms."}
    )
    decoder_weight: float = field(
        default=1.0, metadata={"help": "Weight (>= 0) of the decoder's hidden-state and self-attention terms."}
    )
    cross_attention_weight: float = field(
        default=1.0, metadata={"help": "Weight (>= 0) of the decoder's cross-attention term."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.layer_map is not None:
            raise ValueError(
                f"layer_map={self.layer_map} is for single-stack models; a seq2seq model maps each stack on its own: "
                "pass encoder_layer_map and/or decoder_layer_map instead."
            )
        for name in ("encoder_layer_map", "decoder_layer_map"):
            value = getattr(self, name)
            if value is not None and (not value or not all(type(g) is int and g >= 1 for g in value)):
                raise ValueError(f"{name} must be a non-empty list of teacher layer numbers >= 1, got {value}.")
        if self.relation_weight > 0:
            raise ValueError(
                f"relation_weight={self.relation_weight} is for encoder-only and decoder-only models; a seq2seq "
                "model's stacks are distilled with hidden_weight and attention_weight. Set relation_weight=0."
            )
        if self.teacher_logits_cache_dir is not None:
            raise ValueError(
                f"teacher_logits_cache_dir={self.teacher_logits_cache_dir!r} is for encoder-only and decoder-only "
                "models; a seq2seq teacher runs online here. Set teacher_logits_cache_dir=None."
            )
        for name in ("encoder_weight", "decoder_weight", "cross_attention_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}; set it to 0 to switch those terms off.")


def normalised_teacher_weights(weights: list[float] | None, count: int) -> list[float]:
    """`teacher_weights` divided by their sum (equal weights when None), checked against the number of teachers."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(
            f"teacher_weights={weights} has {len(weights)} entries, but teacher_model has {count} teacher(s): give "
            "one weight per teacher, in teacher_model's order."
        )
    total = sum(weights)
    return [weight / total for weight in weights]


def check_finite(args) -> None:
    """Refuse a float field that is inf or NaN: `temperature=inf` or `learning_rate=nan` would train to nothing."""
    for name in (f.name for f in dataclasses.fields(args)):
        value = getattr(args, name)
        if type(value) is float and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}: give a finite value.")
