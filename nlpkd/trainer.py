"""DistillationTrainer: a `transformers.Trainer` whose student learns from a frozen teacher."""

import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable

import datasets
import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import enable_full_determinism, number_of_arguments, set_seed
from transformers.utils import can_return_loss, find_labels

from .arguments import DistillationArguments, normalised_teacher_weights
from .checkpoints import resolve_resume
from .distillation_model import (
    DistillationModel,
    check_checkpoint,
    load_projections,
    make_projections,
    save_distillation_model,
)
from .losses import token_cross_entropy
from .positions import MASKED_LM_CLASSES, batch_counts, label_grid, logit_level
from .preflight import check_teacher_student, check_tokenizer_fits
from .publishing import PublishingMixin
from .schedules import group_scales, temperature_at
from .teacher_cache import CACHE_ROW, CacheRowCollator, TeacherCache, load_or_build_teacher_cache
from .terms import BatchView, HiddenTerm, LogitTerm, TeacherShare, output_terms, single_stack_terms

logger = logging.getLogger(__name__)


class DistillationMixin:
    """The distillation half of [`DistillationTrainer`] and [`Seq2SeqDistillationTrainer`]: put it before a
    `Trainer` class in the bases. Subclasses that distil other model shapes override `_check_pair` and
    `_layer_terms` (which layers and positions each layer-wise loss compares)."""

    seq2seq = False

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | list[PreTrainedModel] | None = None,
        args: DistillationArguments | None = None,
        model_init: Callable[..., PreTrainedModel] | None = None,
        **kwargs,
    ):
        teachers = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        if not teachers or teachers[0] is None or (model is None and model_init is None):
            raise ValueError(
                f"{type(self).__name__} needs both `model` (the student) and `teacher_model` (a model, or a list of "
                "them); for a fresh student per run (`hyperparameter_search`), pass `model_init`, a function "
                "returning one, instead of `model`."
            )
        if model is not None and model_init is not None:
            raise ValueError(f"{type(self).__name__} takes `model` or `model_init`, not both.")
        named = [("model", model)] + [(_teacher_label(i, len(teachers)), t) for i, t in enumerate(teachers)]
        for name, value in named:
            if value is not None and not isinstance(value, nn.Module):
                raise TypeError(
                    f"{name} must be a loaded model, got {type(value).__name__} {value!r}: load it first, e.g. "
                    f"AutoModelForSequenceClassification.from_pretrained({value!r})."
                )
        if not isinstance(args, DistillationArguments):
            raise TypeError(f"args must be a DistillationArguments, got {type(args).__name__}.")
        self.teachers: list = []
        self.teacher_cache = None
        self._teacher_models = teachers
        self.teacher_weights = normalised_teacher_weights(args.teacher_weights, len(teachers))
        if model is None:
            # The Trainer seeds before every model_init; the first student is only for the checks and the Trainer's
            # inspection, and each `train()` makes its own.
            enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
            model = model_init() if number_of_arguments(model_init) == 0 else model_init(None)
        super().__init__(model=self._distillation_model(model, args), args=args, **kwargs)
        for index, teacher in enumerate(teachers):
            _for_teacher(index, len(teachers), check_tokenizer_fits, self.processing_class, teacher)
        if model_init is not None and (self.optimizer is not None or self.lr_scheduler is not None):
            raise ValueError("`model_init` makes a new student per run: it cannot take fixed `optimizers`.")
        self.model_init = model_init
        self.teacher_names = [teacher.name_or_path for teacher in teachers]
        # The Trainer inspected the wrapper; labels and loss behaviour are the student's.
        if args.label_names is None:
            self.label_names = find_labels(type(model))
        # A bare student has no labels; its evaluation loss is then the distillation loss.
        self.can_return_loss = can_return_loss(type(model)) or not self.label_names
        # compute_loss scales each loss to its share of the optimizer step (see `_normalisers`).
        self.loss_is_scaled_for_ga = True
        self.logit_level = logit_level(model)
        self._prepare_teacher()
        self._set_terms()
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._eval_component_sums: dict[str, torch.Tensor] = {}
        self._eval_component_steps = 0
        self._window_counts: dict[str, torch.Tensor] | None = None
        self._window_processes = 1
        self.saving_checkpoint = False

    @property
    def teacher(self) -> PreTrainedModel | None:
        """The (first) teacher, prepared to run; None when it never runs (teacher cache, or no distillation loss)."""
        return self.teachers[0] if self.teachers else None

    @property
    def teacher_name(self) -> str:
        return self.teacher_names[0]

    # ---- the loss terms ----

    def _distillation_model(self, student: PreTrainedModel, args: DistillationArguments) -> DistillationModel:
        """Check the pair(s), set up the layer-wise terms that `args` asks for, and wrap `student` with fresh
        projections. Runs at init and, with `model_init`, again for each run once its (trial's) settings are set."""
        teachers = self._teacher_models
        self.layer_maps = [
            _for_teacher(index, len(teachers), self._check_pair, teacher, student, args)
            for index, teacher in enumerate(teachers)
        ]
        self.layer_map = self.layer_maps[0]
        self.hidden_terms, self.attention_terms = [], []
        for index, (teacher, layer_map) in enumerate(zip(teachers, self.layer_maps, strict=True)):
            if self.teacher_weights[index] == 0:
                continue
            suffix = "" if len(teachers) == 1 else f"_teacher{index}"
            share = TeacherShare(index, self.teacher_weights[index], suffix)
            hidden_terms, attention_terms = self._layer_terms(student, teacher, layer_map, args, share)
            self.hidden_terms += hidden_terms
            self.attention_terms += attention_terms
        projections = None
        if self.hidden_terms:
            projections = nn.ModuleList(
                projection
                for term in self.hidden_terms
                for projection in make_projections(
                    self._width(student, term),
                    self._width(teachers[term.teacher], term),
                    len(term.layer_map) + 1,
                )
            )
        outputs = tuple(term.outputs for term in self.hidden_terms)
        return DistillationModel(student, projections, outputs, tuple(term.name for term in self.hidden_terms))

    def _set_terms(self) -> None:
        """Every enabled loss term, its weight, and what each teacher is asked for; after `_prepare_teacher`."""
        args = self.args
        self.terms = [
            *output_terms(args, self.logit_level, self.label_names, self.teacher_weights, self.teacher_cache),
            *self.hidden_terms,
            *self.attention_terms,
        ]
        self.loss_weights = {term.name: term.weight for term in self.terms}
        self._causal_attention = any(term.causal for term in self.attention_terms)
        # A token-level student's own loss may be computed by its hard term from the logits instead (see
        # `_check_own_cross_entropy`): None until the first training batch has shown whether that gives the same.
        token_level = self.logit_level in ("causal", "token") and not self.seq2seq
        plain_labels = list(self.label_names) == ["labels"]
        self._own_cross_entropy = None if "hard_loss" in self.loss_weights and token_level and plain_labels else False
        online = [term for term in self.terms if isinstance(term, LogitTerm)]
        self._teacher_runs = []  # per teacher: (run it?, ask for hidden states?, its attention captures)
        for index in range(len(self._teacher_models)):
            hidden = any(term.teacher == index for term in self.hidden_terms)
            captures = [term.teacher_capture for term in self.attention_terms if term.teacher == index]
            run = hidden or bool(captures) or any(index in term.teachers for term in online)
            self._teacher_runs.append((run, hidden, captures))

    def _check_pair(self, teacher: PreTrainedModel, student: PreTrainedModel, args) -> list[int]:
        return check_teacher_student(teacher, student, args)

    def _layer_terms(self, student, teacher, layer_map, args, share: TeacherShare) -> tuple[list, list]:
        return single_stack_terms(student, teacher, layer_map, args, share)

    def _width(self, model: PreTrainedModel, term: HiddenTerm) -> int:
        return model.config.hidden_size

    # ---- the teachers ----

    def _prepare_teacher(self) -> None:
        """Cache the teachers' logits (then training never runs them), or make them ready to run: frozen, in eval
        mode, on the student's device, inside the same autocast, never wrapped for gradient sync."""
        args = self.args
        if args.teacher_logits_cache_dir is not None:
            if self.teacher_cache is None:
                self.teacher_cache = self._load_or_build_teacher_cache()
            return
        if self.teachers or not args.needs_teacher:
            return
        check_teacher_parallelism(self.accelerator)
        for teacher in self._teacher_models:
            teacher.requires_grad_(False).eval()
            if getattr(teacher, "hf_device_map", None) is None:
                # Accelerate places no model itself under FSDP; a teacher loaded with a device_map stays where it is.
                teacher.to(args.device)
            self.teachers.append(self.accelerator.prepare_model(teacher, evaluation_mode=True))

    def _hp_search_setup(self, trial) -> None:
        # `train()` calls this right after `model_init` made a fresh student, with a search trial's settings (e.g.
        # temperature, loss weights) now set on args: the terms, weights and projections follow them.
        super()._hp_search_setup(trial)
        if self.model_init is None:
            return
        self.teacher_weights = normalised_teacher_weights(self.args.teacher_weights, len(self._teacher_models))
        self.model = self._distillation_model(self.model, self.args)
        if self.place_model_on_device:
            self._move_model_to_device(self.model, self.args.device)
        self.model_wrapped = self.model
        self._prepare_teacher()
        self._set_terms()

    def _load_or_build_teacher_cache(self) -> TeacherCache:
        """Cache the teachers' top-k logits over the training set (once per teachers, data and k), and number the
        training rows (`teacher_cache_row`) so that each batch finds its own, however the rows are shuffled."""
        args, cache = self.args, f"teacher_logits_cache_dir={self.args.teacher_logits_cache_dir!r}"
        if type(self.student).__name__ in MASKED_LM_CLASSES:
            raise ValueError(
                f"{cache}, but {type(self.student).__name__} is a masked LM: its collator draws new masked positions "
                "every epoch, so the teacher's logits at them cannot be computed ahead. Set "
                "teacher_logits_cache_dir=None to run the teacher online."
            )
        if not isinstance(self.train_dataset, datasets.Dataset):
            raise TypeError(
                f"{cache} needs a `datasets.Dataset` train_dataset, whose rows it numbers to find their cached "
                f"logits; got {type(self.train_dataset).__name__}. Convert it (datasets.Dataset.from_list), or set "
                "teacher_logits_cache_dir=None."
            )
        train = self.train_dataset
        if CACHE_ROW in train.column_names:
            train = train.remove_columns(CACHE_ROW)
        for teacher in self._teacher_models:
            teacher.requires_grad_(False).eval().to(args.device)
        with args.main_process_first(desc="teacher logits cache"):
            teacher_cache = load_or_build_teacher_cache(
                args.teacher_logits_cache_dir,
                self._teacher_models,
                self._remove_unused_columns(train, "training"),
                self.data_collator,
                self.logit_level,
                args.teacher_logits_top_k,
                self.label_names,
                args.per_device_eval_batch_size,
                show_progress=not args.disable_tqdm and args.should_log,
                teacher_weights=self.teacher_weights,
                temperature=args.temperature,
            )
        self.train_dataset = train.add_column(CACHE_ROW, np.arange(len(train)))
        self.data_collator = CacheRowCollator(self.data_collator)
        return teacher_cache

    @property
    def student(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).student

    # ---- the loss: run what the terms need, sum weight × loss × scale ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and self._has_labels(inputs):
            # Evaluation of a student with a task: its own loss on the labels.
            outputs = model(**_model_inputs(inputs))
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        outputs, losses = self._term_losses(model, inputs)
        weights = self.scheduled_weights()
        if model.training:
            scales = self._normalisers(inputs)
            loss = sum(weights[name] * value * scales[name] for name, value in losses.items())
        else:
            # Evaluation of a bare student (general distillation): the distillation loss itself.
            loss = sum(weights[name] * value for name, value in losses.items())
        if model.training:
            # Each component's share of this optimizer step's mean over every process, as the loss itself is made:
            # summed over the micro-batches, averaged over processes and steps at logging (see `log`).
            for name, value in losses.items():
                self._component_sums[name] = self._component_sums.get(name, 0.0) + value.detach() * scales[name]
        else:
            for name, value in losses.items():
                self._eval_component_sums[name] = self._eval_component_sums.get(name, 0.0) + value.detach()
            self._eval_component_steps += 1
        return (loss, outputs) if return_outputs else loss

    def loss_components(self, inputs: dict) -> dict[str, torch.Tensor]:
        """Each enabled term's loss on one batch, by log key: its mean over the batch's positions, before weighting
        (`loss_weights` holds the weights). The batch is prepared as for training (device, seq2seq decoder inputs);
        the model runs in its current mode (train or eval), without gradients."""
        with torch.no_grad():
            _, losses = self._term_losses(self.model, self._prepare_inputs(dict(inputs)))
        return {name: value.detach() for name, value in losses.items()}

    def scheduled_weights(self) -> dict[str, float]:
        """Each term's weight now: `loss_weights` times its group's scale under `args.loss_schedule` at the
        current training progress (optimizer steps done / all steps; 0 before training)."""
        scales = self._group_scales()
        return {term.name: term.weight * scales[term.group] for term in self.terms}

    def current_temperature(self) -> float:
        """The logit-KD temperature now, under `args.temperature_schedule` at the current training progress."""
        args = self.args
        return temperature_at(args.temperature_schedule, args.temperature, args.final_temperature, self._progress())

    def _progress(self) -> float:
        state = self.state
        return state.global_step / state.max_steps if state.max_steps else 0.0

    def _current_terms(self) -> list:
        """The terms, with the scheduled temperature where the schedule moves it."""
        if self.args.temperature_schedule == "constant":
            return self.terms
        temperature = self.current_temperature()
        return [
            dataclasses.replace(term, temperature=temperature) if hasattr(term, "temperature") else term
            for term in self.terms
        ]

    def _group_scales(self) -> dict[str, float]:
        scales = group_scales(self.args.loss_schedule, self._progress(), self.args.two_phase_split)
        if len({term.group for term in self.terms}) < 2:  # one group only: nothing to hand over between groups
            return dict.fromkeys(scales, 1.0)
        return scales

    def _has_labels(self, inputs) -> bool:
        return bool(self.label_names) and all(inputs.get(name) is not None for name in self.label_names)

    def _term_losses(self, model, inputs) -> tuple:
        """The student's outputs and {term name: its loss} of one batch."""
        view = self._batch_view(model, inputs)
        return view.student, {term.name: term.loss(view) for term in self._current_terms()}

    def _batch_view(self, model, inputs) -> BatchView:
        """Run the student and the teachers for what the enabled terms need (hidden states, attention captures)."""
        model_inputs = _model_inputs(inputs)
        features = {name: value for name, value in model_inputs.items() if name not in self.label_names}
        own_cross_entropy = self._own_cross_entropy is True and model.training
        student_inputs = model_inputs if "hard_loss" in self.loss_weights and not own_cross_entropy else features
        with _recording([term.student_capture for term in self.attention_terms]):
            if self.hidden_terms:
                outputs, projected = model(**student_inputs, project_hidden_states=True)
            else:
                outputs, projected = model(**student_inputs), {}
        if self._own_cross_entropy is None and model.training and outputs.loss is not None:
            self._own_cross_entropy = self._check_own_cross_entropy(outputs, inputs["labels"])
        teacher_outputs = []
        runs = self._teacher_runs if self.teachers else []  # no teacher runs with the cache
        for teacher, (run, hidden, captures) in zip(self.teachers, runs, strict=True):
            if not run:
                teacher_outputs.append(None)
                continue
            with torch.no_grad(), _recording(captures):
                teacher_outputs.append(teacher(**features, output_hidden_states=hidden))
        return BatchView(inputs, outputs, projected, tuple(teacher_outputs))

    def _check_own_cross_entropy(self, outputs, labels: torch.Tensor) -> bool | None:
        """Whether the student's loss is the plain token cross-entropy (`losses.token_cross_entropy`): then later
        training batches run the student without labels and the hard term computes that loss in chunks, which spares
        the model's (positions × vocabulary) log-probabilities and gradient buffers. Checked once, on this batch's
        values (one host read): a model whose loss adds anything (an auxiliary loss, label smoothing) keeps its own.
        None (check again) when this batch gives no finite loss to compare."""
        model_loss = outputs.loss.detach().float()
        if not bool(torch.isfinite(model_loss)):
            return None
        own = token_cross_entropy(outputs.logits.detach(), label_grid(labels, self.logit_level))
        same = bool(torch.isclose(own, model_loss, rtol=1e-4, atol=1e-6))
        logger.info(
            "The student's own loss %s the token cross-entropy (%.6g vs %.6g): %s.",
            "is" if same else "is not",
            model_loss.item(),
            own.item(),
            "computed in chunks from its logits from now on" if same else "kept as the model computes it",
        )
        return same

    def _normalisers(self, inputs) -> dict[str, torch.Tensor]:
        """Per term, (positions in this micro-batch) / (positions in the optimizer step) × processes.

        A per-micro-batch mean times this factor is that micro-batch's share of the mean over the whole step, so
        gradient accumulation and uneven lengths across micro-batches and processes give one big batch's gradients.
        """
        local = batch_counts(inputs, self.logit_level, self._causal_attention, self.seq2seq)
        window, processes = self._window_counts, self._window_processes
        if window is None:  # called outside the training loop: the plain per-batch means
            window, processes = local, 1
        return {term.name: local[term.count] / window[term.count].clamp(min=1.0) * processes for term in self.terms}

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        # Never a checkpoint a crash left half-written: True picks the last complete one (see `nlpkd.checkpoints`).
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._window_counts = None  # a later compute_loss outside training uses its own batch's counts

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window_counts, self._window_processes = None, 1
        if batch_samples:
            self._component_steps += 1  # one optimizer step
            per_batch = [
                batch_counts(batch, self.logit_level, self._causal_attention, self.seq2seq) for batch in batch_samples
            ]
            names = list(per_batch[0])
            totals = torch.stack([sum(counts[name] for counts in per_batch) for name in names]).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                totals = self.accelerator.gather(totals).view(-1, len(names)).sum(0)
                # DDP averages gradients over processes; multiplying by their number makes that a sum.
                self._window_processes = self.accelerator.num_processes
            self._window_counts = dict(zip(names, totals, strict=True))
        return batch_samples, num_items_in_batch

    # ---- logging and evaluation ----

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (they carry "loss") get the mean of each component since the previous log, over all processes
        # and weighted by positions exactly as `loss` is, so that the weighted components add up to it.
        if "loss" in logs and self._component_steps:
            for name, total in self._component_sums.items():
                logs[name] = nested_gather(total / self._component_steps, self.args.parallel_mode).mean().item()
            self._component_sums, self._component_steps = {}, 0
        if "loss" in logs and self.args.loss_schedule != "constant":
            scales = self._group_scales()  # at the logging step
            logs["prediction_loss_scale"], logs["layer_loss_scale"] = scales["prediction"], scales["layers"]
        if "loss" in logs and self.args.temperature_schedule != "constant":
            logs["temperature"] = self.current_temperature()  # at the logging step
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._eval_component_sums, self._eval_component_steps = {}, 0
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        # A bare student is evaluated on the distillation losses; each is reported next to eval_loss.
        for name, total in self._eval_component_sums.items():
            mean = total / max(self._eval_component_steps, 1)
            output.metrics[f"{metric_key_prefix}_{name}"] = nested_gather(mean, self.args.parallel_mode).mean().item()
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # A bare student has no predictions worth gathering (only hidden states): evaluate its loss alone.
        return super().prediction_step(model, inputs, prediction_loss_only or not self.label_names, ignore_keys)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(inspect.signature(self.model.student.forward).parameters)
            self._signature_columns += list({"label", "label_ids", *self.label_names})
            if self.args.teacher_logits_cache_dir is not None:  # each row's place in the teacher cache
                self._signature_columns.append(CACHE_ROW)

    # ---- saving: the student alone in every model folder, the projections only in checkpoints ----

    def _save_checkpoint(self, model, trial) -> None:
        self.saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        state_dict = wrapper.state_dict() if state_dict is None else state_dict
        save_distillation_model(wrapper, state_dict, output_dir, with_projections=self.saving_checkpoint)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.saving_checkpoint:  # a pickle of the arguments: the student's folder has them in its model card
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        check_checkpoint(resume_from_checkpoint, wrapper)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.student)
        load_projections(resume_from_checkpoint, wrapper)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class DistillationTrainer(PublishingMixin, DistillationMixin, Trainer):
    """A [`Trainer`] that distils `teacher_model` into `model` (the student).

    Takes every [`Trainer`] argument plus `teacher_model`; `args` must be a [`DistillationArguments`]. The teacher is
    frozen, kept in eval mode, run without gradients on the student's device and inside the same autocast, and never
    enters the optimizer. Component losses are logged next to `loss` as `hard_loss`, `logit_loss`, `hidden_loss` and
    `attention_loss`. Evaluation reports the student's own task loss, or for a bare student (general distillation)
    the distillation loss with its components as `eval_hidden_loss` and `eval_attention_loss`.

    Pass `model_init` (a function returning a fresh student) instead of `model` for `hyperparameter_search`: each
    `train()` then starts from a new student, and the loss terms, weights and projections follow the arguments that
    run's trial set (e.g. `temperature`, `logit_weight`, `hidden_weight`; see `nlpkd.search`).

    Logit KD runs over the positions that carry a prediction (see `nlpkd.positions`): per sequence for classifiers,
    per labelled token for masked LMs, per next-token label for causal LMs. Each loss is divided by its count of
    positions over the whole optimizer step, so gradient accumulation gives the gradients of one big batch.

    With `teacher_logits_cache_dir`, the teacher's top-k logits over the training set are computed once at init (or
    loaded, see `nlpkd.teacher_cache`) and training never runs the teacher.

    `teacher_model` may be a list of teachers, weighted by `args.teacher_weights`: logit KD learns the weighted mixture
    of their tempered distributions, and each teacher gets its own layer-wise terms (`hidden_loss_teacher0`, ...).
    With `relation_weight`, MiniLMv2's Q/K/V self-attention relations are distilled too (`relation_loss`).
    Every loss is a term (`nlpkd.terms`): `trainer.terms` lists the enabled ones, `trainer.loss_weights` their
    weights, and `trainer.loss_components(batch)` their values on one batch.
    """


def check_teacher_parallelism(accelerator) -> None:
    """Refuse a parallel set-up the frozen teacher cannot run under, before any training step.

    The teacher is kept whole on every process (it is never sharded by this trainer): under DeepSpeed ZeRO-3 the
    models loaded after the DeepSpeed config exists are partitioned by `zero.Init`, and a partitioned model outside
    the DeepSpeed engine fails at its first forward with an error about empty weights.
    """
    deepspeed_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 (zero_stage=3) is not supported by DistillationTrainer: ZeRO-3 partitions the teacher, "
            "which this trainer keeps whole on every process and runs outside the DeepSpeed engine. Use ZeRO-2 "
            "(recipes/accelerate/deepspeed_zero2.yaml), FSDP (recipes/accelerate/fsdp.yaml) or DDP "
            "(recipes/accelerate/multi_gpu.yaml) instead."
        )


def _teacher_label(index: int, count: int) -> str:
    return "teacher_model" if count == 1 else f"teacher_model[{index}]"


def _for_teacher(index: int, count: int, check: Callable, *arguments):
    """`check(*arguments)` about one teacher; with several teachers, its error says which one."""
    try:
        return check(*arguments)
    except ValueError as error:
        if count == 1:
            raise
        raise ValueError(f"{_teacher_label(index, count)}: {error}") from error


def _model_inputs(inputs: dict) -> dict:
    """The batch without the teacher-cache row numbers, which no model takes."""
    return {name: value for name, value in inputs.items() if name != CACHE_ROW}


@contextlib.contextmanager
def _recording(captures: list):
    with contextlib.ExitStack() as stack:
        for capture in captures:
            stack.enter_context(capture.recording())
        yield
