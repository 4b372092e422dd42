"""The module the Trainer optimises (the student plus its hidden-state projections), and how its checkpoints are
written and read: the student alone in every model folder, the projections only in checkpoints."""

import os

import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel

from .checkpoints import check_checkpoint_projections, check_checkpoint_student

PROJECTIONS_NAME = "distillation_projections.safetensors"


class DistillationModel(nn.Module):
    """The module the Trainer optimises: the student plus its trainable hidden-state projections.

    Keeping the projections inside the module that the Trainer prepares puts them in the optimizer, syncs their
    gradients across processes and lets checkpoints restore them; `DistillationTrainer` saves the student alone.
    """

    _keys_to_ignore_on_save = None

    def __init__(
        self,
        student: PreTrainedModel,
        projections: nn.ModuleList | None = None,
        hidden_outputs: tuple[str, ...] = ("hidden_states",),
        hidden_names: tuple[str, ...] | None = None,
    ):
        super().__init__()
        self.student = student
        # One projection per student hidden state (embeddings + each layer) of each hidden-state term, in
        # `hidden_outputs` order (the model output each term reads), student width -> that term's teacher width.
        self.projections = projections
        self.hidden_outputs = hidden_outputs
        # The key of each term's projected states (its loss name); by default the output's name.
        self.hidden_names = hidden_outputs if hidden_names is None else hidden_names
        self.config = student.config
        self.main_input_name = student.main_input_name
        # FSDP's default auto-wrap policy wraps the layer classes the model names here: the student's.
        self._no_split_modules = getattr(student, "_no_split_modules", None)

    def forward(self, project_hidden_states: bool = False, **inputs):
        """Run the student and return its outputs, as the student would (so `Trainer.predict` works unchanged);
        with `project_hidden_states`, return (outputs, {term name: its hidden states at its teacher's width})."""
        outputs = self.student(**inputs, output_hidden_states=project_hidden_states)
        if not project_hidden_states:
            return outputs
        projections, projected = iter(self.projections), {}
        for name, output in zip(self.hidden_names, self.hidden_outputs, strict=True):
            projected[name] = tuple(_project(next(projections), hidden) for hidden in getattr(outputs, output))
        return outputs, projected

    def generate(self, *args, **kwargs):
        return self.student.generate(*args, **kwargs)

    @property
    def generation_config(self):
        return self.student.generation_config

    @generation_config.setter
    def generation_config(self, value) -> None:
        self.student.generation_config = value

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def tie_weights(self) -> None:
        self.student.tie_weights()


def _project(projection: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    # Projections are made in fp32 (they train from scratch); a bf16 or fp16 student's states meet them in their dtype.
    weight = getattr(projection, "weight", None)
    return projection(hidden if weight is None else hidden.to(weight.dtype))


def make_projections(student_width: int, teacher_width: int, count: int) -> nn.ModuleList:
    """`count` fresh projections student width -> teacher width (identities when the widths match)."""
    if student_width == teacher_width:
        return nn.ModuleList(nn.Identity() for _ in range(count))
    return nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(count))


def save_distillation_model(
    wrapper: DistillationModel, state_dict: dict, output_dir: str, with_projections: bool
) -> None:
    """Write the student of `state_dict` (the wrapper's) with `save_pretrained`, and with `with_projections` (a
    checkpoint) the projections next to it in `PROJECTIONS_NAME`."""
    student_state = {k.removeprefix("student."): v for k, v in state_dict.items() if k.startswith("student.")}
    wrapper.student.save_pretrained(output_dir, state_dict=student_state)
    projection_state = {k: v.contiguous() for k, v in state_dict.items() if k.startswith("projections.")}
    if with_projections and projection_state:
        safetensors.torch.save_file(projection_state, os.path.join(output_dir, PROJECTIONS_NAME))


def check_checkpoint(checkpoint: str, wrapper: DistillationModel) -> None:
    """Refuse a checkpoint whose student or projections do not fit `wrapper` (before anything is loaded)."""
    check_checkpoint_student(checkpoint, wrapper.student)
    check_checkpoint_projections(os.path.join(checkpoint, PROJECTIONS_NAME), wrapper.projections)


def load_projections(checkpoint: str, wrapper: DistillationModel) -> None:
    """Restore the trained projections of `checkpoint` into `wrapper` (nothing to do when it has none)."""
    if wrapper.projections is None or not list(wrapper.projections.parameters()):
        return
    path = os.path.join(checkpoint, PROJECTIONS_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"{checkpoint} has no {PROJECTIONS_NAME}: it was not written by a DistillationTrainer "
            "with hidden-state distillation, so the trained projections cannot be restored. Resume from a "
            "checkpoint of this run, or start without resume_from_checkpoint."
        )
    state = safetensors.torch.load_file(path, device="cpu")
    wrapper.projections.load_state_dict({k.removeprefix("projections."): v for k, v in state.items()})
