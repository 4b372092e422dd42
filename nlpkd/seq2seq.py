"""Seq2SeqDistillationTrainer: word-level, hidden-state and attention distillation inside `Seq2SeqTrainer`."""

from transformers import PreTrainedModel, Seq2SeqTrainer

from .preflight import check_seq2seq_pair
from .publishing import PublishingMixin
from .terms import HiddenTerm, TeacherShare, seq2seq_terms, stack_width
from .trainer import DistillationMixin


class Seq2SeqDistillationTrainer(PublishingMixin, DistillationMixin, Seq2SeqTrainer):
    """A [`Seq2SeqTrainer`] that distils an encoder-decoder `teacher_model` into `model` (Marian, BART, T5, an
    `EncoderDecoderModel`, ...); `args` must be a [`Seq2SeqDistillationArguments`].

    Word-level KD (Kim & Rush): the teacher reads the same `decoder_input_ids` as the student (made from the labels
    when the batch has none), and KL at temperature T (× T²) runs over every target position with a label, padding
    excluded. Hidden states and attention maps are distilled per stack with their own layer maps: the encoder, the
    decoder (causal self-attention) and the decoder's cross-attention (decoder queries × real encoder keys). Log keys:
    `hard_loss`, `logit_loss`, `encoder_hidden_loss`, `decoder_hidden_loss`, `encoder_attention_loss`,
    `decoder_attention_loss`, `cross_attention_loss`. Evaluation and prediction are `Seq2SeqTrainer`'s, so
    `predict_with_generate` translates with the student. Sequence-level KD trains on the teacher's translations:
    see `nlpkd.pseudo_targets`.
    """

    seq2seq = True

    def _check_pair(self, teacher: PreTrainedModel, student: PreTrainedModel, args) -> dict[str, list[int]]:
        return check_seq2seq_pair(teacher, student, args)

    def _layer_terms(self, student, teacher, layer_map, args, share: TeacherShare):
        return seq2seq_terms(student, teacher, layer_map, args, share)

    def _width(self, model: PreTrainedModel, term: HiddenTerm) -> int:
        return stack_width(model, term.outputs.split("_", 1)[0])

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if inputs.get("labels") is not None and inputs.get("decoder_input_ids") is None:
            inputs["decoder_input_ids"] = self.student.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
        return inputs
