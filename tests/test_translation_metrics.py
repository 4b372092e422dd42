"""translation_metrics: a Seq2SeqTrainer compute_metrics that decodes generated ids and labels, then scores them."""

import numpy as np
import sacrebleu
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import EvalPrediction, PreTrainedTokenizerFast

from nlpkd.translation import translation_metrics

WORDS = ["<pad>", "</s>", "<unk>", "<s>", "el", "gato", "se", "sentó", "en", "la", "alfombra", "y", "dijo", "Dios"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )


def ids(text: str, width: int, pad: int) -> list[int]:
    tokens = [WORDS.index(word) for word in text.split()] + [1]
    return tokens + [pad] * (width - len(tokens))


def test_scores_decoded_generations_against_decoded_labels():
    tokenizer = word_tokenizer()
    hypotheses = ["el gato se sentó en la alfombra", "y dijo Dios el gato"]
    references = ["el gato se sentó en la alfombra", "y dijo Dios"]
    # Generations start with the decoder start token and are padded with -100 where the Trainer joined batches;
    # labels are padded with -100.
    generated = np.array([[3, *ids(hypotheses[0], 9, 0)], [3, *ids(hypotheses[1], 7, 0), -100, -100]])
    labels = np.array([ids(references[0], 9, -100), ids(references[1], 9, -100)])
    metrics = translation_metrics(tokenizer)(EvalPrediction(predictions=generated, label_ids=labels))
    assert metrics["bleu"] == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert 0 < metrics["bleu"] < 100


def test_bootstrap_intervals_are_reported_when_asked():
    tokenizer = word_tokenizer()
    texts = ["el gato se sentó", "y dijo Dios", "la alfombra", "el gato dijo", "Dios se sentó en la alfombra"]
    generated = np.array([ids(text, 8, 0) for text in texts])
    labels = np.array([ids(text, 8, -100) for text in reversed(texts)])
    metrics = translation_metrics(tokenizer, n_bootstrap=50)(
        EvalPrediction(predictions=(generated,), label_ids=labels)
    )
    assert metrics["chrf_ci"] > 0
    assert set(metrics) == {"bleu", "bleu_ci", "chrf", "chrf_ci"}


def test_generation_length_limit_follows_the_longest_source():
    from nlpkd.pseudo_targets import length_limit

    assert length_limit(10, 128, 2.0) == 30  # 2 tokens a source token, plus 10
    assert length_limit(100, 128, 2.0) == 128  # never past max_new_tokens
    assert length_limit(10, 128, None) == 128
