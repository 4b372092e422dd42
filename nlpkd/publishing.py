"""Publishing a distilled student: its model card and plots next to every saved student, and Hub pushes of the
student's files alone (never the teacher, the projections, checkpoints or optimizer state).

`PublishingMixin` is the one seam between the distillation trainer and publishing: the trainer classes put it first
in their bases; the distillation core imports nothing from here, `nlpkd.hub` or `nlpkd.model_card`.
"""

import logging
import os
import shutil
import sys
from pathlib import Path

from transformers.trainer_utils import HubStrategy
from transformers.utils.hub import PushInProgress

from .hub import hub_files, push_failed, upload_student
from .model_card import distillation_setup, hardware, non_default_arguments, reproduce_command, write_model_card

logger = logging.getLogger(__name__)

# `Trainer.create_model_card`'s names for what `nlpkd.model_card.model_card` calls otherwise.
TRAINER_CARD_NAMES = {
    "finetuned_from": "base_model",
    "tasks": "pipeline_tag",
    "dataset_tags": "datasets",
    "dataset": "dataset_name",
    "dataset_args": "dataset_config",
}


class PublishingMixin:
    """Model cards and Hub pushes for a distillation trainer: put it before `DistillationMixin` in the bases.

    It reads the core's public facts: `teacher_name(s)`, `teacher_weights`, `layer_map(s)`, `student`,
    `hidden_terms`, `attention_terms`, `seq2seq` and `saving_checkpoint` (True while a checkpoint is written:
    checkpoints get no card).
    """

    def __init__(self, *args, **kwargs):
        self._card_facts: dict = {}
        self._hub_repo_deferred = True  # see init_hf_repo
        super().__init__(*args, **kwargs)
        self._hub_repo_deferred = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student (weights, config, tokenizer, generation config) with its model card and plots to
        `output_dir`: the folder `push_to_hub` uploads. Checkpoints get no card; they add the projections and the
        Trainer's state."""
        super().save_model(output_dir, _internal_call=True)
        if not self.saving_checkpoint:
            self.create_model_card(output_dir=output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def create_model_card(self, output_dir: str | None = None, **card) -> None:
        """Write the student's model card (README.md) and plots to `output_dir` (default: args.output_dir).

        `card` takes the arguments of `nlpkd.model_card.model_card` (`results`, `setup`, `citations`, `command`,
        `pipeline_tag`, `datasets`, `dataset_name`, `language`, `license`, ...) or the Trainer's names for some of them
        (`finetuned_from`, `tasks`, `dataset_tags`, `dataset`, `dataset_args`). They are remembered, so the cards that
        `save_model`, `push_to_hub` and pushes during training write later keep them. The trainer adds the rest: the
        teacher, losses, layer map, student shape, non-default training arguments, hardware, loss curves, command.
        """
        self._remember_card(card)
        if not self.is_world_process_zero():
            return
        facts = dict(self._card_facts)
        for name in ("tags", "datasets"):  # the Trainer takes a single string too
            if isinstance(facts.get(name), str):
                facts[name] = [facts[name]]
        citations = ["hinton", *(["tinybert"] if self.hidden_terms or self.attention_terms else [])]
        citations += ["kim_rush"] if self.seq2seq else []
        card = {
            "model_name": (self.args.hub_model_id or Path(self.args.output_dir).absolute().name).split("/")[-1],
            "base_model": self.teacher_name,
            "command": reproduce_command(sys.argv[0], sys.argv[1:]),
            **facts,
            "setup": {**self._distillation_setup(), **facts.get("setup", {})},
            "citations": [*citations, *facts.get("citations", [])],
            "training_arguments": non_default_arguments(self.args),
            "hardware": hardware(self.args.device),
        }
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        write_model_card(output_dir, log_history=self.state.log_history, **card)

    def _distillation_setup(self) -> dict[str, str]:
        setup = distillation_setup(self.args, self.layer_map, self.student)
        if len(self.teacher_names) > 1:  # the card's base_model is the first; all of them, with their weights
            shares = zip(self.teacher_names, self.teacher_weights, self.layer_maps, strict=True)
            setup["teachers (weight; layer map)"] = ", ".join(
                f"{name} ({weight:.3g}{f'; {layer_map}' if layer_map else ''})" for name, weight, layer_map in shares
            )
        return setup

    def _remember_card(self, card: dict) -> None:
        for name, value in card.items():
            if value is not None:
                self._card_facts[TRAINER_CARD_NAMES.get(name, name)] = value

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Save the student with its card and plots to args.output_dir, then upload the student's files alone
        (`nlpkd.hub.hub_files`): never the teacher, the projections, checkpoints, optimizer state or training_args.bin.

        `kwargs` go to `create_model_card`. When a blocking upload fails (no token, Hub unreachable, ...), the local
        folder is complete and `nlpkd.hub.HubPushError` says how to upload it without training again.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self._remember_card(kwargs)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        output_dir = self.args.output_dir
        token = token if token is not None else self.args.hub_token
        revision = revision if revision is not None else self.args.hub_revision
        try:
            if self.hub_model_id is None:
                self.init_hf_repo(token=token, private=private)
            return upload_student(output_dir, self.hub_model_id, commit_message, token, revision, blocking)
        except Exception as error:  # whatever went wrong, the student is saved: say so, and how to upload it
            raise push_failed(error, output_dir, self.hub_model_id or self.args.hub_model_id) from error

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # Trainer.__init__ creates the Hub repo at once; here the first push does, so that a missing token or an
        # unreachable Hub fails after the student is saved (saying how to upload it), not before training.
        if not self._hub_repo_deferred:
            super().init_hf_repo(token=token, private=private)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer's version uploads output_dir with training_args.bin and, for hub_strategy "checkpoint", whole
        # checkpoints (DistillationArguments refuses those strategies). Here: the student's files alone.
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        in_progress = getattr(self, "push_in_progress", None)
        if not self.args.hub_always_push and in_progress is not None and not in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        output_dir = self.args.output_dir
        for name in hub_files(checkpoint_folder):  # copied rather than saved again: no new gathering of the weights
            shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
        self.create_model_card()
        try:
            if self.hub_model_id is None:
                self.init_hf_repo(token=self.args.hub_token)
            job = upload_student(
                output_dir,
                self.hub_model_id,
                f"Training in progress, step {self.state.global_step}",
                self.args.hub_token,
                self.args.hub_revision,
                blocking=False,
            )
        except Exception as error:  # a failed push must not stop training; the push at the end says what to do
            logger.warning("Pushing step %d to the Hub failed: %r. Training goes on.", self.state.global_step, error)
            return
        if in_progress is None or in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            in_progress.jobs.append(job)
