"""DistillationTrainer: a `transformers.Trainer` whose student learns from a frozen teacher."""

import contextlib
import inspect
import os

import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import nested_gather
from transformers.utils import can_return_loss, find_labels

from .arguments import DistillationArguments
from .capture import AttentionCapture
from .losses import attention_kl_loss, attention_scores_mse_loss, hidden_mse_loss, logit_kd_loss
from .preflight import check_teacher_student

PROJECTIONS_NAME = "distillation_projections.safetensors"
LOSS_WEIGHT_FIELDS = {
    "hard_loss": "hard_label_weight",
    "logit_loss": "logit_weight",
    "hidden_loss": "hidden_weight",
    "attention_loss": "attention_weight",
}
ATTENTION_LOSSES = {"mse": attention_scores_mse_loss, "kl": attention_kl_loss}


class DistillationModel(nn.Module):
    """The module the Trainer optimises: the student plus its trainable hidden-state projections.

    Keeping the projections inside the module that the Trainer prepares puts them in the optimizer, syncs their
    gradients across processes and lets checkpoints restore them; `DistillationTrainer` saves the student alone.
    """

    _keys_to_ignore_on_save = None

    def __init__(self, student: PreTrainedModel, projections: nn.ModuleList | None = None):
        super().__init__()
        self.student = student
        # One projection per student hidden state (embeddings + each layer), student width -> teacher width.
        self.projections = projections
        self.config = student.config
        self.main_input_name = student.main_input_name

    def forward(self, project_hidden_states: bool = False, **inputs):
        """Run the student; with `project_hidden_states`, also return its hidden states at the teacher's width."""
        outputs = self.student(**inputs, output_hidden_states=project_hidden_states)
        if not project_hidden_states:
            return outputs, None
        projected = tuple(
            project(hidden) for project, hidden in zip(self.projections, outputs.hidden_states, strict=True)
        )
        return outputs, projected

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def tie_weights(self) -> None:
        self.student.tie_weights()


def _projections(student_width: int, teacher_width: int, count: int) -> nn.ModuleList:
    if student_width == teacher_width:
        return nn.ModuleList(nn.Identity() for _ in range(count))
    return nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(count))


class DistillationTrainer(Trainer):
    """A [`Trainer`] that distils `teacher_model` into `model` (the student).

    Takes every [`Trainer`] argument plus `teacher_model`; `args` must be a [`DistillationArguments`]. The teacher is
    frozen, kept in eval mode, run without gradients on the student's device and inside the same autocast, and never
    enters the optimizer. Component losses are logged next to `loss` as `hard_loss`, `logit_loss`, `hidden_loss` and
    `attention_loss`. Evaluation reports the student's own task loss.
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | None = None,
        args: DistillationArguments | None = None,
        **kwargs,
    ):
        if model is None or teacher_model is None:
            raise ValueError("DistillationTrainer needs both `model` (the student) and `teacher_model`.")
        if not isinstance(args, DistillationArguments):
            raise TypeError(f"args must be a DistillationArguments, got {type(args).__name__}.")
        self.layer_map = check_teacher_student(teacher_model, model, args)
        projections = None
        if args.hidden_weight > 0:
            count = model.config.num_hidden_layers + 1
            projections = _projections(model.config.hidden_size, teacher_model.config.hidden_size, count)
        super().__init__(model=DistillationModel(model, projections), args=args, **kwargs)
        # The Trainer inspected the wrapper; labels and loss behaviour are the student's.
        if args.label_names is None:
            self.label_names = find_labels(type(model))
        self.can_return_loss = can_return_loss(type(model))
        self.loss_is_scaled_for_ga = False  # our losses are per-batch means: the Trainer divides by GA steps

        self.teacher = None
        if args.needs_teacher:
            teacher_model.requires_grad_(False).eval()
            self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.student_attention = self.teacher_attention = None
        if args.attention_weight > 0:
            self.student_attention = AttentionCapture(model, list(range(1, len(self.layer_map) + 1)))
            self.teacher_attention = AttentionCapture(teacher_model, self.layer_map)
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._saving_checkpoint = False

    @property
    def student(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).student

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            outputs, _ = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        args = self.args
        features = {name: value for name, value in inputs.items() if name not in self.label_names}
        with _recording(self.student_attention):
            outputs, student_hidden = model(
                **(inputs if args.hard_label_weight > 0 else features), project_hidden_states=args.hidden_weight > 0
            )
        teacher_outputs = None
        if self.teacher is not None:
            with torch.no_grad(), _recording(self.teacher_attention):
                teacher_outputs = self.teacher(**features, output_hidden_states=args.hidden_weight > 0)
        losses = self._component_losses(inputs.get("attention_mask"), outputs, student_hidden, teacher_outputs)
        loss = sum(getattr(args, LOSS_WEIGHT_FIELDS[name]) * value for name, value in losses.items())
        for name, value in losses.items():
            self._component_sums[name] = self._component_sums.get(name, 0.0) + value.detach()
        self._component_steps += 1
        return (loss, outputs) if return_outputs else loss

    def _component_losses(self, attention_mask, outputs, student_hidden, teacher_outputs) -> dict[str, torch.Tensor]:
        args = self.args
        losses = {}
        if args.hard_label_weight > 0:
            if outputs.loss is None:
                raise ValueError(
                    f"hard_label_weight={args.hard_label_weight} but the student returned no loss: the batch has no "
                    f"{self.label_names}. Add labels to the dataset, or set hard_label_weight=0."
                )
            losses["hard_loss"] = outputs.loss
        if args.logit_weight > 0:
            # Per-token logits (B, T, C) of an encoder leave out padding; per-sequence logits (B, C) need no mask.
            logit_mask = None
            if (
                attention_mask is not None
                and outputs.logits.shape[:-1] == attention_mask.shape
                and not self.student.config.is_encoder_decoder
            ):
                logit_mask = attention_mask.bool()
            losses["logit_loss"] = logit_kd_loss(
                outputs.logits, teacher_outputs.logits, args.temperature, args.logit_loss, mask=logit_mask
            )
        if args.hidden_weight > 0:
            teacher_layers = [0, *self.layer_map]  # the embeddings map 0 -> 0
            losses["hidden_loss"] = torch.stack(
                [
                    hidden_mse_loss(student, teacher_outputs.hidden_states[layer], attention_mask)
                    for student, layer in zip(student_hidden, teacher_layers, strict=True)
                ]
            ).mean()
        if args.attention_weight > 0:
            attention_loss = ATTENTION_LOSSES[args.attention_loss]
            losses["attention_loss"] = torch.stack(
                [
                    attention_loss(
                        self.student_attention.scores(student_layer),
                        self.teacher_attention.scores(teacher_layer),
                        attention_mask,
                    )
                    for student_layer, teacher_layer in enumerate(self.layer_map, start=1)
                ]
            ).mean()
        return losses

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (they carry "loss") get the mean of each component since the previous log.
        if "loss" in logs and self._component_steps:
            for name, total in self._component_sums.items():
                logs[name] = nested_gather(total / self._component_steps, self.args.parallel_mode).mean().item()
            self._component_sums, self._component_steps = {}, 0
        super().log(logs, start_time)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(inspect.signature(self.model.student.forward).parameters)
            self._signature_columns += list({"label", "label_ids", *self.label_names})

    # ---- saving: the student alone in every model folder, the projections only in checkpoints ----

    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            state_dict = wrapper.state_dict()
        student_state = {k.removeprefix("student."): v for k, v in state_dict.items() if k.startswith("student.")}
        wrapper.student.save_pretrained(output_dir, state_dict=student_state)
        projection_state = {k: v.contiguous() for k, v in state_dict.items() if k.startswith("projections.")}
        if self._saving_checkpoint and projection_state:
            safetensors.torch.save_file(projection_state, os.path.join(output_dir, PROJECTIONS_NAME))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.student)
        if wrapper.projections is None or not list(wrapper.projections.parameters()):
            return
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} has no {PROJECTIONS_NAME}: it was not written by a DistillationTrainer "
                "with hidden-state distillation, so the trained projections cannot be restored. Resume from a "
                "checkpoint of this run, or start without resume_from_checkpoint."
            )
        state = safetensors.torch.load_file(path, device="cpu")
        wrapper.projections.load_state_dict({k.removeprefix("projections."): v for k, v in state.items()})

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def _recording(capture: AttentionCapture | None):
    return capture.recording() if capture is not None else contextlib.nullcontext()
