"""TinyBERT data augmentation (nlpkd.augmentation): which words are replaced by what, determinism, the cache, and
augmented rows that only the teacher labels."""

import re

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

from nlpkd import DistillationArguments, DistillationTrainer
from nlpkd import augmentation as aug
from nlpkd.losses import logit_kd_loss

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ",", "."]
VOCAB += ["the", "movie", "was", "good", "bad", "film", "great", "plot", "dull", "a", "un", "##watch", "##able"]
TEXTS = [
    "The movie was unwatchable!",
    "a good film, a great plot.",
    "the plot was dull, the film was bad.",
    "Great movie",
]
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))


@pytest.fixture
def mlm(tokenizer):
    torch.manual_seed(0)
    return BertForMaskedLM(tiny_bert_config(vocab_size=len(VOCAB), **NO_DROPOUT)).eval()


def favour(mlm, tokenizer, *words: str) -> None:
    """Make the MLM predict `words` above all others, in that order, at every position."""
    with torch.no_grad():
        for rank, word in enumerate(words):
            mlm.cls.predictions.bias[tokenizer.convert_tokens_to_ids(word)] = 100.0 - 10 * rank


def embeddings_with_neighbour(mlm, tokenizer, word: str, neighbour: str) -> torch.Tensor:
    """The MLM's word embeddings with `neighbour`'s row set to the mean of `word`'s pieces (cosine 1)."""
    embeddings = mlm.get_input_embeddings().weight.detach().clone()
    pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    embeddings[tokenizer.convert_tokens_to_ids(neighbour)] = embeddings[pieces].mean(0)
    return embeddings


def test_single_piece_words_take_the_masked_lms_top_word_and_others_their_embedding_neighbour(mlm, tokenizer):
    favour(mlm, tokenizer, "great", "film")
    embeddings = embeddings_with_neighbour(mlm, tokenizer, "unwatchable", "bad")
    variants, sources = aug.augment_texts(
        TEXTS[:1], tokenizer, mlm, embeddings, copies=1, probability=1.0, candidates=1
    )
    # Every word replaced; the capital kept; punctuation untouched.
    assert variants == ["Great great great bad!"]
    assert sources == [0]


def test_no_candidate_is_the_word_itself(mlm, tokenizer):
    favour(mlm, tokenizer, "movie", "film")
    embeddings = mlm.get_input_embeddings().weight.detach()
    variants, _ = aug.augment_texts(["movie was"], tokenizer, mlm, embeddings, copies=1, probability=1.0, candidates=1)
    assert variants == ["film movie"]


def test_each_pass_of_the_masked_lm_masks_words_a_stride_apart(mlm, tokenizer):
    text = "the movie was good the film was bad the plot was dull"
    seen = []
    handle = mlm.bert.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    try:
        aug.augment_texts([text], tokenizer, mlm, mlm.get_input_embeddings().weight.detach(), 1, probability=1.0)
    finally:
        handle.remove()
    rows = torch.cat(seen)
    assert len(rows) == aug.MASK_STRIDE  # one pass per residue of the 12 words' indices
    masked = [set(torch.nonzero(row == tokenizer.mask_token_id).flatten().tolist()) for row in rows]
    # Position p holds word p - 1 ([CLS] first): each pass masks the words of one residue, all of them.
    words = len(text.split())
    assert sorted(tuple(sorted(p - 1 for p in positions)) for positions in masked) == [
        tuple(range(residue, words, aug.MASK_STRIDE)) for residue in range(aug.MASK_STRIDE)
    ]


def test_variants_change_only_words_are_seeded_and_drop_repeats(mlm, tokenizer):
    embeddings = mlm.get_input_embeddings().weight.detach()
    settings = dict(copies=4, probability=0.5, candidates=3)
    variants, sources = aug.augment_texts(TEXTS, tokenizer, mlm, embeddings, seed=1, **settings)
    assert (variants, sources) == aug.augment_texts(TEXTS, tokenizer, mlm, embeddings, seed=1, **settings)
    assert variants != aug.augment_texts(TEXTS, tokenizer, mlm, embeddings, seed=2, **settings)[0]
    assert sources == sorted(sources) and len(variants) > len(TEXTS)
    for variant, source in zip(variants, sources, strict=True):
        original = TEXTS[source]
        assert variant != original
        # Only runs of letters differ: spacing and punctuation are the source's.
        assert re.sub("[A-Za-z]+", "", variant) == re.sub("[A-Za-z]+", "", original)
        assert len(variant.split()) == len(original.split())
    for source in set(sources):
        own = [variant for variant, index in zip(variants, sources, strict=True) if index == source]
        assert len(own) == len(set(own)) <= settings["copies"]


def test_augmented_rows_are_unlabelled_and_made_once(mlm, tokenizer, tmp_path, monkeypatch):
    teacher = BertForSequenceClassification(tiny_bert_config(vocab_size=len(VOCAB)))
    arguments = aug.AugmentationArguments(augment_copies=2)
    rows = aug.augmented_rows(TEXTS, tokenizer, mlm, teacher, arguments, str(tmp_path))
    assert set(rows["label"]) == {-100}
    assert len(rows) > 0 and all(TEXTS[i] != text for i, text in zip(rows["source"], rows["text"], strict=True))
    monkeypatch.setattr(aug, "augment_texts", lambda *args, **kwargs: pytest.fail("the cache was not used"))
    again = aug.augmented_rows(TEXTS, tokenizer, mlm, teacher, arguments, str(tmp_path))
    assert again["text"] == rows["text"] and again["source"] == rows["source"]
    with pytest.raises(pytest.fail.Exception):  # other settings are another cache entry
        aug.augmented_rows(TEXTS, tokenizer, mlm, teacher, aug.AugmentationArguments(augment_copies=3), str(tmp_path))


@pytest.mark.parametrize(
    "field, value",
    [("augment_copies", -1), ("augment_probability", 0.0), ("augment_probability", 1.5), ("augment_candidates", 0)],
)
def test_bad_augmentation_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be .* got {value}"):
        aug.AugmentationArguments(**{field: value})


def test_rows_without_a_label_are_taught_by_the_teacher_alone(tmp_path):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(**NO_DROPOUT)).eval()
    student = BertForSequenceClassification(tiny_bert_config(hidden_size=16, num_hidden_layers=2, **NO_DROPOUT))
    args = DistillationArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", hidden_weight=0.0, attention_weight=0.0
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    input_ids = torch.randint(5, 99, (6, 7), generator=torch.Generator().manual_seed(4))
    features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    labels = torch.tensor([1, -100, 0, -100, -100, 1])
    mixed = trainer.loss_components({**features, "labels": labels})
    with torch.no_grad():
        student_logits, teacher_logits = student(**features).logits, teacher(**features).logits
    labelled = labels != -100
    hard = torch.nn.functional.cross_entropy(student_logits[labelled], labels[labelled])
    assert mixed["hard_loss"].item() == pytest.approx(hard.item(), rel=1e-5, abs=1e-6)
    # Logit KD covers every row, labelled or not.
    kd = logit_kd_loss(student_logits, teacher_logits, args.temperature)
    assert mixed["logit_loss"].item() == pytest.approx(kd.item(), rel=1e-5, abs=1e-6)
    # A batch of augmented rows alone: no hard loss (not NaN), the same KD.
    unlabelled = trainer.loss_components({**features, "labels": torch.full((6,), -100)})
    assert unlabelled["hard_loss"].item() == 0.0
    assert unlabelled["logit_loss"].item() == pytest.approx(kd.item(), rel=1e-5, abs=1e-6)
