"""Unit tests of nlpkd/language_modeling.py: text corpora, token blocks, fixed masks, the LM collator, perplexity."""

import json
import math
import random

import datasets
import pytest
import torch
from conftest import VOCAB_SIZE, tiny_bert_config
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
)

from nlpkd.language_modeling import (
    LanguageModelingCollator,
    load_text_corpus,
    perplexity,
    tokenize_blocks,
    with_fixed_labels,
)

WORDS = ["good", "great", "fine", "fun", "bad", "awful", "dull", "poor", "movie", "film", "the", "was", "a"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = [*SPECIALS, *WORDS]
IDS = {token: index for index, token in enumerate(VOCAB)}
CLS, SEP, MASK = IDS["[CLS]"], IDS["[SEP]"], IDS["[MASK]"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab_file = tmp_path_factory.mktemp("tokenizer") / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert tokenizer("the movie")["input_ids"] == [CLS, IDS["the"], IDS["movie"], SEP]  # words are in the vocab
    return tokenizer


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def corpus_of(train: list[str], validation: list[str] | None = None) -> datasets.DatasetDict:
    splits = {"train": datasets.Dataset.from_dict({"text": train})}
    if validation is not None:
        splits["validation"] = datasets.Dataset.from_dict({"text": validation})
    return datasets.DatasetDict(splits)


@pytest.fixture(scope="module")
def blocks(tokenizer) -> datasets.Dataset:
    """About 460 blocks of 16 tokens from random word texts."""
    return tokenize_blocks(corpus_of(random_texts(1000)), tokenizer, 16)["train"]


# load_text_corpus


def test_txt_files_hold_one_text_a_line_and_empty_lines_are_dropped(tmp_path):
    (tmp_path / "train.txt").write_text("first text\n\nsecond text\n   \nthird one\n")
    (tmp_path / "valid.txt").write_text("held out\n\n\nanother one\n")
    corpus = load_text_corpus(
        train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "valid.txt"), seed=0
    )
    assert set(corpus) == {"train", "validation"}
    assert corpus["train"].column_names == ["text"]
    # The validation file is used as it is: train is not split.
    assert corpus["train"]["text"][:] == ["first text", "second text", "third one"]
    assert corpus["validation"]["text"][:] == ["held out", "another one"]


def write_table(path, column: str, texts: list) -> None:
    """`texts` under `column` (next to an `id` column) as .jsonl, .json (array), .csv or .tsv."""
    rows = [{"id": index, column: text} for index, text in enumerate(texts)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text("".join(f"{row['id']}{sep}{row[column]}\n" for row in [{"id": "id", column: column}, *rows]))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_table_files_read_the_text_column_and_hold_out_a_validation_share(tmp_path, suffix):
    texts = [f"text number {index}" for index in range(20)]
    path = tmp_path / f"train{suffix}"
    write_table(path, "body", [*texts[:10], "", *texts[10:]])  # the empty text is dropped
    corpus = load_text_corpus(train_file=str(path), text_column="body", validation_fraction=0.25, seed=0)
    assert corpus["train"].column_names == corpus["validation"].column_names == ["text"]
    assert len(corpus["validation"]) == 5  # 25 % of the 20 non-empty texts
    assert sorted(corpus["train"]["text"][:] + corpus["validation"]["text"][:]) == sorted(texts)


def test_validation_file_of_another_format_is_used(tmp_path):
    (tmp_path / "train.txt").write_text("one\ntwo\nthree\n")
    write_table(tmp_path / "valid.csv", "text", ["held out", "", "another"])
    corpus = load_text_corpus(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "valid.csv"))
    assert corpus["train"]["text"][:] == ["one", "two", "three"]
    assert corpus["validation"]["text"][:] == ["held out", "another"]


def test_held_out_split_depends_on_the_seed_only(tmp_path):
    texts = [f"line {index}" for index in range(100)]
    (tmp_path / "train.txt").write_text("\n".join(texts) + "\n")

    def split(seed: int) -> tuple[list[str], list[str]]:
        corpus = load_text_corpus(train_file=str(tmp_path / "train.txt"), validation_fraction=0.1, seed=seed)
        return corpus["train"]["text"][:], corpus["validation"]["text"][:]

    train, validation = split(1)
    assert len(validation) == 10
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(texts)
    assert split(1) == (train, validation)
    assert set(split(2)[1]) != set(validation)


@pytest.fixture
def corpus_files(tmp_path) -> dict[str, str]:
    (tmp_path / "good.txt").write_text("a text\nanother text\nand a third\n")
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "corpus.xml").write_text("<text>a text</text>\n")
    write_table(tmp_path / "reviews.csv", "review", ["a text", "another text"])
    write_table(tmp_path / "blank.csv", "text", ["", " ", ""])
    return {path.name: str(path) for path in tmp_path.iterdir()} | {
        "missing.txt": str(tmp_path / "missing.txt"),
        "missing.jsonl": str(tmp_path / "missing.jsonl"),
    }


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(dataset_name="some/dataset", train_file="good.txt"), "dataset_name or train_file, not both"),
        (dict(validation_file="good.txt"), r"validation_file=.*good\.txt.* needs a train_file"),
        (dict(train_file="good.txt", validation_fraction=0), "validation_fraction must be between 0 and 1, got 0"),
        (dict(train_file="good.txt", validation_fraction=1), "validation_fraction must be between 0 and 1, got 1"),
        (dict(train_file="good.txt", validation_fraction=-0.1), "validation_fraction must be between 0 and 1"),
        (dict(train_file="corpus.xml"), r"train_file=.*corpus\.xml.* unknown extension '\.xml'"),
        (dict(train_file="missing.txt"), r"train_file=.*missing\.txt.* does not exist"),
        (dict(train_file="missing.jsonl"), r"train_file=.*missing\.jsonl.* does not exist"),
        (dict(train_file="good.txt", validation_file="missing.txt"), r"validation_file=.*missing\.txt.* not exist"),
        (dict(train_file="reviews.csv", text_column="body"), r"no column text_column='body'.*columns: id, review"),
        (dict(train_file="blank.txt"), "The train split has no non-empty text"),
        (dict(train_file="blank.csv"), "The train split has no non-empty text in column 'text'"),
        (dict(train_file="good.txt", validation_file="blank.txt"), "The validation split has no non-empty text"),
    ],
)
def test_bad_arguments_raise_a_value_error_that_names_them(corpus_files, arguments, message):
    arguments = {name: corpus_files.get(value, value) for name, value in arguments.items()}
    with pytest.raises(ValueError, match=message):
        load_text_corpus(**arguments)


def test_embedded_default_is_the_movie_dialog_corpus():
    corpus = load_text_corpus()
    train, validation = corpus["train"]["text"][:], corpus["validation"]["text"][:]
    assert len(train) > 50_000
    assert abs(len(validation) - 0.05 * (len(train) + len(validation))) <= 1
    assert all(text.strip() for text in train + validation)
    assert not any("\t" in text for text in train + validation)  # the pair separator became a space
    assert load_text_corpus()["validation"]["text"][:] == validation  # the same seed, the same split


# tokenize_blocks


def test_blocks_cut_the_concatenated_tokens_and_drop_the_remainder(tokenizer):
    blocks = tokenize_blocks(corpus_of(["the movie was good", "a film", "bad"]), tokenizer, 4)["train"]
    # [CLS] the movie was good [SEP] [CLS] a film [SEP] [CLS] bad [SEP]: 13 tokens, 3 blocks, one token left over.
    the, movie, was, good, a, film, bad = (IDS[word] for word in ("the", "movie", "was", "good", "a", "film", "bad"))
    assert blocks["input_ids"][:] == [[CLS, the, movie, was], [good, SEP, CLS, a], [film, SEP, CLS, bad]]
    assert blocks["attention_mask"][:] == [[1] * 4] * 3


@pytest.mark.parametrize("block_size", [2, 7, 16])
def test_every_block_is_block_size_long_and_blocks_are_a_prefix_of_the_token_stream(tokenizer, block_size):
    train, validation = random_texts(150, seed=1), random_texts(30, seed=2)
    blocks = tokenize_blocks(corpus_of(train, validation), tokenizer, block_size)
    for split, texts in (("train", train), ("validation", validation)):
        stream = [token for ids in tokenizer(texts)["input_ids"] for token in ids]
        rows = blocks[split]["input_ids"][:]
        assert len(rows) == len(stream) // block_size
        assert all(len(row) == block_size for row in rows)
        assert [token for row in rows for token in row] == stream[: len(rows) * block_size]


@pytest.mark.parametrize("block_size", [1, 0, -4])
def test_block_size_below_two_is_rejected(tokenizer, block_size):
    with pytest.raises(ValueError, match=f"block_size must be at least 2, got {block_size}"):
        tokenize_blocks(corpus_of(["the movie was good"]), tokenizer, block_size)


def test_a_split_shorter_than_one_block_is_rejected(tokenizer):
    corpus = corpus_of(random_texts(50), validation=["a film"])  # 4 validation tokens
    with pytest.raises(ValueError, match="The validation split is shorter than one block of block_size=8"):
        tokenize_blocks(corpus, tokenizer, 8)


# with_fixed_labels


def test_fixed_masks_are_reproducible_and_seeded(tokenizer, blocks):
    first = with_fixed_labels(blocks, tokenizer, mlm=True, mlm_probability=0.15, seed=3)
    second = with_fixed_labels(blocks, tokenizer, mlm=True, mlm_probability=0.15, seed=3)
    other = with_fixed_labels(blocks, tokenizer, mlm=True, mlm_probability=0.15, seed=4)
    assert first["input_ids"][:] == second["input_ids"][:]
    assert first["labels"][:] == second["labels"][:]
    assert first["labels"][:] != other["labels"][:]


@pytest.mark.parametrize("mlm_probability", [0.15, 0.4])
def test_fixed_masks_label_the_selected_tokens_only(tokenizer, blocks, mlm_probability):
    labelled = with_fixed_labels(blocks, tokenizer, mlm=True, mlm_probability=mlm_probability, seed=0)
    original = torch.tensor(blocks["input_ids"][:])
    inputs, labels = torch.tensor(labelled["input_ids"][:]), torch.tensor(labelled["labels"][:])
    selected = labels != -100
    assert torch.equal(labels[selected], original[selected])  # a selected position's label is the original token
    assert torch.equal(inputs[~selected], original[~selected])  # the others are left as they were
    special = (original == CLS) | (original == SEP)
    assert special.any() and not (selected & special).any()
    share = selected.sum().item() / (~special).sum().item()
    assert share == pytest.approx(mlm_probability, abs=0.02)
    # BERT's 80/10/10: most selected tokens become [MASK], the rest a random or the same token.
    masked = (inputs[selected] == MASK).float().mean().item()
    assert 0.7 < masked < 0.9


def test_causal_labels_are_the_input_ids(tokenizer, blocks):
    labelled = with_fixed_labels(blocks, tokenizer, mlm=False, mlm_probability=0.15, seed=0)
    assert labelled["labels"][:] == blocks["input_ids"][:]
    assert labelled["input_ids"][:] == blocks["input_ids"][:]


# LanguageModelingCollator


@pytest.mark.parametrize("mlm", [True, False])
def test_collator_only_stacks_rows_that_carry_labels(tokenizer, blocks, mlm):
    rows = [dict(blocks[index]) for index in range(6)]
    given = [[-100] * 15 + [index] for index in range(6)]  # labels no masking would produce
    for row, labels in zip(rows, given, strict=True):
        row["labels"] = labels
    batch = LanguageModelingCollator(tokenizer, mlm=mlm, mlm_probability=0.9, seed=0)(rows)
    assert torch.equal(batch["labels"], torch.tensor(given))
    assert torch.equal(batch["input_ids"], torch.tensor([row["input_ids"] for row in rows]))
    assert torch.equal(batch["attention_mask"], torch.ones(6, 16, dtype=torch.long))


def test_collator_masks_rows_without_labels_for_mlm(tokenizer, blocks):
    rows = [dict(blocks[index]) for index in range(8)]
    original = torch.tensor([row["input_ids"] for row in rows])
    batch = LanguageModelingCollator(tokenizer, mlm=True, mlm_probability=0.5, seed=0)(rows)
    selected = batch["labels"] != -100
    assert batch["labels"].shape == original.shape
    assert 0 < selected.sum() < selected.numel()
    assert torch.equal(batch["labels"][selected], original[selected])
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    assert (batch["input_ids"][selected] == MASK).any()
    assert not (selected & ((original == CLS) | (original == SEP))).any()


def test_collator_copies_input_ids_into_labels_for_causal_lm(tokenizer, blocks):
    rows = [dict(blocks[index]) for index in range(8)]
    original = torch.tensor([row["input_ids"] for row in rows])
    batch = LanguageModelingCollator(tokenizer, mlm=False)(rows)
    assert torch.equal(batch["labels"], original)
    assert torch.equal(batch["input_ids"], original)


# perplexity


def lm_dataset(num_rows: int = 10, length: int = 8, seed: int = 0) -> datasets.Dataset:
    """Random token rows whose number of labelled positions varies a lot from row to row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB_SIZE, (num_rows, length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    for row in range(num_rows):
        count = 1 + (row * 5) % length  # 1, 6, 3, 8, 5, 2, 7, 4, 1, 6 labelled positions
        positions = torch.randperm(length, generator=generator)[:count]
        labels[row, positions] = torch.randint(5, VOCAB_SIZE, (count,), generator=generator)
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": [[1] * length] * num_rows, "labels": labels.tolist()}
    )


# A perplexity's relative error is its mean NLL's absolute error. The NLLs (~8, from logits up to ~9) are summed in
# float32 over other batches and shapes: ~1e-6 off, 1 ulp of 8. rel 1e-4 leaves 100x and still tells a mean of batch
# means (~20 % off) apart.
PERPLEXITY_REL = 1e-4


def token_nll(model, dataset: datasets.Dataset, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihoods (float64) and their row index, from the logits of the whole dataset."""
    input_ids = torch.tensor(dataset["input_ids"][:])
    labels = torch.tensor(dataset["labels"][:])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        log_probs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits.double()
    model.train(was_training)
    log_probs = log_probs.log_softmax(-1)
    if causal:
        log_probs, labels = log_probs[:, :-1], labels[:, 1:]
    selected = labels != -100
    nll = -log_probs[selected].gather(-1, labels[selected].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(labels.shape[0]).unsqueeze(1).expand_as(labels)[selected]
    return nll, rows


def mean_of_batch_means(nll: torch.Tensor, rows: torch.Tensor, batch_size: int) -> float:
    means = [
        nll[(rows >= start) & (rows < start + batch_size)].mean()
        for start in range(0, int(rows.max()) + 1, batch_size)
    ]
    return math.exp(torch.stack(means).mean().item())


def masked_lm(**overrides) -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(tiny_bert_config(initializer_range=0.5, **overrides)).eval()


def test_perplexity_weights_every_labelled_token_equally_across_batches():
    model, dataset = masked_lm(), lm_dataset()
    nll, rows = token_nll(model, dataset, causal=False)
    expected = math.exp(nll.mean().item())
    result = perplexity(model, dataset, batch_size=4)  # batches of 4, 4 and 2 rows
    assert result == pytest.approx(expected, rel=PERPLEXITY_REL)
    # The check can tell token weighting from a mean of batch means.
    assert mean_of_batch_means(nll, rows, 4) != pytest.approx(expected, rel=1e-3)
    assert perplexity(model, dataset, batch_size=3) == pytest.approx(result, rel=PERPLEXITY_REL)


def causal_lms():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB_SIZE, n_embd=16, n_layer=2, n_head=2, n_positions=32, initializer_range=0.5)
    )
    torch.manual_seed(0)
    bert = BertLMHeadModel(tiny_bert_config(is_decoder=True, initializer_range=0.5))
    return {"gpt2": gpt2.eval(), "bert_decoder": bert.eval()}


@pytest.mark.parametrize("name", ["gpt2", "bert_decoder"])
def test_perplexity_of_a_causal_lm_scores_the_next_token(name):
    model, dataset = causal_lms()[name], lm_dataset()
    shifted, _ = token_nll(model, dataset, causal=True)
    unshifted, _ = token_nll(model, dataset, causal=False)
    result = perplexity(model, dataset, batch_size=4)
    assert result == pytest.approx(math.exp(shifted.mean().item()), rel=PERPLEXITY_REL)
    assert result != pytest.approx(math.exp(unshifted.mean().item()), rel=1e-3)


@pytest.mark.parametrize("name", ["masked_lm", "gpt2", "bert_decoder"])
def test_perplexity_of_one_batch_is_exp_of_the_models_own_loss(name):
    model = masked_lm() if name == "masked_lm" else causal_lms()[name]
    dataset = lm_dataset(num_rows=4)
    batch = {key: torch.tensor(dataset[key][:]) for key in dataset.column_names}
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert perplexity(model, dataset, batch_size=4) == pytest.approx(math.exp(loss), rel=PERPLEXITY_REL)


def test_perplexity_rejects_a_sequence_classifier():
    model = BertForSequenceClassification(tiny_bert_config())
    with pytest.raises(ValueError, match="perplexity needs a language model; BertForSequenceClassification"):
        perplexity(model, lm_dataset())


def test_perplexity_rejects_a_dataset_without_labels_to_predict():
    dataset = lm_dataset().map(lambda row: {"labels": [-100] * len(row["labels"])})
    with pytest.raises(ValueError, match="no label other than -100"):
        perplexity(masked_lm(), dataset)


def test_perplexity_evaluates_in_eval_mode_and_restores_the_mode():
    model, dataset = masked_lm(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5), lm_dataset()
    expected = math.exp(token_nll(model, dataset, causal=False)[0].mean().item())  # without dropout
    model.train()
    assert perplexity(model, dataset, batch_size=4) == pytest.approx(expected, rel=PERPLEXITY_REL)
    assert all(module.training for module in model.modules())
    model.eval()
    assert perplexity(model, dataset, batch_size=4) == pytest.approx(expected, rel=PERPLEXITY_REL)
    assert not any(module.training for module in model.modules())
