"""Translation data, tokenizers, metrics, sequence-level KD targets, the Bible default and the recipe's smoke runs.

Everything is tiny and built here: a word-level Marian teacher trained for a few dozen steps on synthetic en→es
pairs, a BERT body with a word-piece vocabulary, and a toy pair file under tmp_path.
"""

import copy
import itertools
import json
import logging
import math
import random
import re
import shutil
from pathlib import Path

import datasets
import pytest
import sacrebleu
import torch
from conftest import recipe_progress, speed_rounds_done, tiny_bert_config, tiny_marian_config
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertModel,
    BertTokenizerFast,
    EncoderDecoderModel,
    MarianMTModel,
    PreTrainedTokenizerFast,
)

import nlpkd.bible as bible
from nlpkd import pseudo_targets, report, translation
from nlpkd.fingerprint import teacher_digest
from nlpkd.metrics import load_metric
from nlpkd.pseudo_targets import _as_labels, teacher_translations
from nlpkd.recipes import translation as recipe
from nlpkd.translation import (
    LANGUAGES_FILE,
    Seq2SeqCollator,
    build_encoder_decoder,
    check_coverage,
    check_languages,
    load_encoder_decoder,
    load_translation_pairs,
    save_languages,
    score_translations,
    tokenize_pairs,
    train_target_tokenizer,
)

NOUNS = {"cat": "gato", "dog": "perro", "man": "hombre", "boy": "niño", "bird": "pájaro"}
VERBS = {"sees": "ve", "eats": "come", "likes": "quiere", "hears": "oye"}
ADJECTIVES = {"": "", "big": "grande", "black": "negro"}
PAIRS = [  # 240 pairs: "the big cat sees the dog ." -> "el gato grande ve al perro ."
    (" ".join(f"the {adjective} {n1} {verb} the {n2} .".split()), " ".join(f"el {m1} {a} {v} al {m2} .".split()))
    for (n1, m1), (verb, v), (adjective, a), (n2, m2) in itertools.product(
        NOUNS.items(), VERBS.items(), ADJECTIVES.items(), NOUNS.items()
    )
    if n1 != n2
]
SPANISH = [target for _, target in PAIRS]
MODEL_KEYS = ("bleu", "bleu_ci", "chrf", "chrf_ci", "params", "size_mb", "latency_ms_b1")
PAD, EOS, UNK = 0, 1, 2


def write_pairs(path: Path, rows: list[tuple[str, str]], columns=("en", "es")) -> str:
    """A .tsv or .jsonl pair file with one column per language code."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, row, strict=True))) + "\n" for row in rows))
    else:
        path.write_text("\t".join(columns) + "\n" + "".join("\t".join(row) + "\n" for row in rows))
    return str(path)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One word-level vocabulary for both languages (as Marian shares one): <pad> 0, </s> 1, <unk> 2."""
    words = sorted({word for pair in PAIRS for text in pair for word in text.split()})
    vocab = {word: index for index, word in enumerate(["<pad>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory) -> str:
    """A tiny Marian teacher trained for 80 steps on PAIRS (it translates some of them and stops with </s>)."""
    folder = tmp_path_factory.mktemp("marian")
    tokenizer = word_tokenizer()
    config = tiny_marian_config(
        vocab_size=len(tokenizer), pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD
    )
    torch.manual_seed(0)
    model = MarianMTModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(80):
        batch = rng.sample(PAIRS, 32)
        inputs = tokenizer([source for source, _ in batch], padding=True, return_tensors="pt")
        labels = tokenizer([target for _, target in batch], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == PAD] = -100
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def marian(marian_dir) -> MarianMTModel:
    return MarianMTModel.from_pretrained(marian_dir).eval()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    """A tiny BERT body (like the packaged MiniLM) whose vocabulary covers the English side of PAIRS."""
    folder = tmp_path_factory.mktemp("bert")
    words = sorted({word for source, _ in PAIRS for word in source.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer), num_hidden_layers=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# 1. load_translation_pairs ------------------------------------------------------------------------------------------


def test_local_pair_files_become_source_and_target_splits_cut_with_the_seed(tmp_path):
    rows = PAIRS[:30]
    # Columns in the other order: they are matched by language code, not by position.
    path = write_pairs(tmp_path / "pairs.tsv", [(es, en) for en, es in rows], columns=("es", "en"))
    splits = load_translation_pairs("en", "es", train_file=path, validation_size=4, test_size=5, seed=0)
    assert list(splits) == ["train", "validation", "test"]
    assert {name: len(split) for name, split in splits.items()} == {"train": 21, "validation": 4, "test": 5}
    assert all(split.column_names == ["source", "target"] for split in splits.values())
    seen = [pair for split in splits.values() for pair in zip(split["source"], split["target"], strict=True)]
    assert sorted(seen) == sorted(rows)  # every pair once, disjoint splits, source = en and target = es

    again = load_translation_pairs("en", "es", train_file=path, validation_size=4, test_size=5, seed=0)
    assert all(again[name]["source"] == splits[name]["source"] for name in splits)
    other_seed = load_translation_pairs("en", "es", train_file=path, validation_size=4, test_size=5, seed=1)
    assert other_seed["test"]["source"] != splits["test"]["source"]

    # .jsonl works the same; a given validation file is kept and only the test split is cut from train.
    train = write_pairs(tmp_path / "train.jsonl", rows[:20])
    validation = write_pairs(tmp_path / "validation.jsonl", rows[20:23])
    splits = load_translation_pairs("en", "es", train_file=train, validation_file=validation, test_size=5, seed=0)
    assert {name: len(split) for name, split in splits.items()} == {"train": 15, "validation": 3, "test": 5}
    assert splits["validation"]["source"] == [en for en, _ in rows[20:23]]
    assert splits["validation"]["target"] == [es for _, es in rows[20:23]]
    assert set(splits["test"]["source"]) | set(splits["train"]["source"]) == {en for en, _ in rows[:20]}


def test_a_missing_language_column_names_the_file_and_the_fix(tmp_path):
    path = write_pairs(tmp_path / "pairs.tsv", PAIRS[:10])
    message = (
        rf"train_file='{re.escape(path)}' has no column for \['fr'\] \(columns: \['en', 'es'\]\): name the "
        r"columns by language code, or pass --source_lang/--target_lang"
    )
    with pytest.raises(ValueError, match=message):
        load_translation_pairs("en", "fr", train_file=path, validation_size=1, test_size=1)
    validation = write_pairs(tmp_path / "validation.tsv", PAIRS[:3], columns=("en", "de"))
    with pytest.raises(ValueError, match=r"validation_file=.*validation.tsv' has no column for \['es'\]"):
        load_translation_pairs("en", "es", train_file=path, validation_file=validation, test_size=1)


def test_an_empty_or_missing_text_names_the_row(tmp_path):
    rows = [*PAIRS[:3], ("the cat sees the dog .", " "), *PAIRS[3:6]]
    path = write_pairs(tmp_path / "pairs.tsv", rows)
    with pytest.raises(ValueError, match=r"train_file=.*pairs.tsv' row 4 has an empty or missing 'es' text "):
        load_translation_pairs("en", "es", train_file=path, validation_size=1, test_size=1)
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"en": "the cat", "es": "el gato"}\n{"en": null, "es": "el perro"}\n')
    with pytest.raises(ValueError, match=r"row 2 has an empty or missing 'en' text \(None\): remove the row or fill"):
        load_translation_pairs("en", "es", train_file=str(path), validation_size=1, test_size=1)


def test_dataset_name_and_train_file_together_are_refused(tmp_path):
    path = write_pairs(tmp_path / "pairs.tsv", PAIRS[:10])
    with pytest.raises(ValueError, match=r"Give dataset_name or train_file, not both: got dataset_name='opus_books'"):
        load_translation_pairs("en", "es", dataset_name="opus_books", train_file=path)


def test_too_few_pairs_to_cut_a_split(tmp_path):
    path = write_pairs(tmp_path / "pairs.tsv", PAIRS[:5])
    message = (
        r"Cutting a test split of 5 pairs needs more than 5 training pairs, got 5: pass a test_file or a smaller "
        r"--test_size"
    )
    with pytest.raises(ValueError, match=message):
        load_translation_pairs("en", "es", train_file=path, validation_size=1, test_size=5)
    with pytest.raises(ValueError, match=r"Cutting a validation split of 3 pairs .* got 3: pass a validation_file"):
        load_translation_pairs("en", "es", train_file=path, validation_size=3, test_size=2)


def test_the_embedded_default_is_english_to_spanish_only(monkeypatch):
    monkeypatch.setattr(bible, "verse_pairs", lambda *args, **kwargs: pytest.fail("read the Bible"))
    message = (
        r"The embedded default data is English→Spanish Bible verses, but source_lang='en' and target_lang='fr': "
        r"pass --source_lang en --target_lang es, or your own pairs with --dataset_name or --train_file"
    )
    with pytest.raises(ValueError, match=message):
        load_translation_pairs("en", "fr")
    with pytest.raises(ValueError, match=r"source_lang='es' and target_lang='en'"):
        load_translation_pairs("es", "en")


# 2. The SentencePiece target tokenizer and the language checks ----------------------------------------------------


@pytest.fixture(scope="module")
def target_tokenizer_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("target_tokenizer") / "es"
    train_target_tokenizer(SPANISH, 60, "es", str(folder))
    return str(folder)


def test_target_tokenizer_ids_eos_and_round_trip(target_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(target_tokenizer_dir)
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [0, 1, 2, 3]
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id)
    assert ids == (0, 1, 2, 3)
    assert 20 < len(tokenizer) <= 60
    for text in ("el gato grande ve al perro .", "el niño oye al pájaro .", "el"):
        encoded = tokenizer(text)["input_ids"]
        assert encoded[-1] == 1 and encoded.count(1) == 1, encoded
        assert 2 not in encoded  # no unknown pieces in a training sentence
        assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    batch = tokenizer(["el gato ve al perro .", "el niño negro quiere al hombre ."])["input_ids"]
    assert all(row[-1] == 1 for row in batch)
    assert json.loads((Path(target_tokenizer_dir) / LANGUAGES_FILE).read_text()) == {"target": "es"}


def test_check_languages_refuses_a_tokenizer_for_another_language(target_tokenizer_dir, tmp_path):
    check_languages(target_tokenizer_dir, target="es")
    check_languages(target_tokenizer_dir, source="en")  # nothing recorded for the source side
    check_languages(str(tmp_path), target="fr")  # nothing recorded at all
    message = (
        r"was made for target language 'es', but target_lang='fr': pass --target_lang es or a tokenizer/teacher "
        r"for 'fr'"
    )
    with pytest.raises(ValueError, match=message):
        check_languages(target_tokenizer_dir, target="fr")
    save_languages(str(tmp_path / "model"), source="en")
    save_languages(str(tmp_path / "model"), target="de")  # adds to what is recorded
    assert json.loads((tmp_path / "model" / LANGUAGES_FILE).read_text()) == {"source": "en", "target": "de"}
    with pytest.raises(ValueError, match=r"source language 'en', but source_lang='es'"):
        check_languages(str(tmp_path / "model"), source="es", target="de")


@pytest.mark.parametrize("texts", [["Ο σκύλος τρώει ψάρι στο σπίτι"], ["Собака ест рыбу дома", "Кот видит птицу"]])
def test_check_coverage_refuses_a_tokenizer_of_another_script(target_tokenizer_dir, texts):
    tokenizer = AutoTokenizer.from_pretrained(target_tokenizer_dir)
    with pytest.raises(ValueError, match=r"The target tokenizer .* reads \d+% of the target tokens as <unk>: it does"):
        check_coverage(tokenizer, texts, "target")
    check_coverage(tokenizer, SPANISH[:50], "target")
    check_coverage(tokenizer, [*SPANISH[:10], "¿"], "target")  # an unknown piece now and then is fine


# 3. The collator ----------------------------------------------------------------------------------------------------


def test_collator_pads_labels_and_shifts_them_into_decoder_inputs():
    collator = Seq2SeqCollator(word_tokenizer(), decoder_start_token_id=3, pad_token_id=PAD)
    features = [
        {"input_ids": [5, 6, 7, 1], "attention_mask": [1, 1, 1, 1], "labels": [8, 9, 10, 1]},
        {"input_ids": [5, 1], "attention_mask": [1, 1], "labels": [8, 1]},
    ]
    batch = collator(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, 10, 1], [8, 1, -100, -100]]
    assert batch["decoder_input_ids"].tolist() == [[3, 8, 9, 10], [3, 8, 1, 0]]

    given = [dict(row, decoder_input_ids=[4, 4, 4, 4]) for row in features]
    assert collator(given)["decoder_input_ids"].tolist() == [[4, 4, 4, 4], [4, 4, 4, 4]]
    unlabelled = collator([{k: v for k, v in row.items() if k != "labels"} for row in features])
    assert "decoder_input_ids" not in unlabelled and unlabelled.get("labels") is None  # e.g. for prediction
    assert unlabelled["input_ids"].tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]]


# 4. BLEU and chrF ---------------------------------------------------------------------------------------------------

PREDICTIONS = [
    "the cat sat on the mat",
    "a dog runs in the park today",
    "it is raining heavily in the city",
    "she reads a long book every night",
    "the children play football after school",
    "we had fish for dinner yesterday",
    "the train arrives at nine",
    "he never drinks coffee",
]
REFERENCES = [
    "the cat sat on the mat",
    "a dog is running in the park",
    "it rains heavily in town",
    "she reads a book each night",
    "children play football after school",
    "yesterday we ate fish for dinner",
    "the train comes at nine o'clock",
    "he does not drink coffee",
]


def test_sacrebleu_module_matches_sacrebleu():
    results = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert results == {
        "bleu": pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score),
        "chrf": pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score),
    }
    assert 0 < results["bleu"] < 100 and 0 < results["chrf"] < 100
    perfect = load_metric("sacrebleu").compute(predictions=REFERENCES, references=REFERENCES)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)


def test_sacrebleu_bootstrap_gives_intervals():
    results = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES, n_bootstrap=50)
    assert set(results) == {"bleu", "bleu_ci", "chrf", "chrf_ci"}
    assert results["bleu_ci"] > 0 and results["chrf_ci"] > 0
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert results["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)


def test_sacrebleu_several_references_per_prediction():
    second = [*PREDICTIONS[:4], *REFERENCES[4:]]  # the second reference set matches the first four predictions
    references = [[first, other] for first, other in zip(REFERENCES, second, strict=True)]
    results = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=references)
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second]).score)
    assert results["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES, second]).score)
    assert results["bleu"] > sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score


def test_score_translations_wraps_the_metric():
    results = score_translations(PREDICTIONS, REFERENCES, n_bootstrap=20)
    assert results == load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES, n_bootstrap=20)
    assert results["bleu_ci"] > 0
    assert set(score_translations(PREDICTIONS, REFERENCES, n_bootstrap=1)) == {"bleu", "chrf"}


# 5. Sequence-level KD targets ---------------------------------------------------------------------------------------


def toy_tokenized(count: int = 12) -> datasets.Dataset:
    rows = PAIRS[::7][:count]  # sources of several lengths
    pairs = datasets.Dataset.from_dict({"source": [s for s, _ in rows], "target": [t for _, t in rows]})
    tokenizer = word_tokenizer()
    return tokenize_pairs(pairs, tokenizer, tokenizer, max_source_length=16, max_target_length=16)


def count_generate_calls(monkeypatch, model) -> list:
    calls = []
    original = model.generate

    def generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def cached_folders(cache_dir: Path) -> list[Path]:
    return sorted(path for path in cache_dir.iterdir() if (path / pseudo_targets.COMPLETE_MARKER).is_file())


def test_teacher_translations_replace_the_labels_and_match_generate(marian, tmp_path, monkeypatch):
    data = toy_tokenized()
    calls = count_generate_calls(monkeypatch, marian)
    settings = dict(num_beams=2, max_new_tokens=12, batch_size=5)
    translated = teacher_translations(marian, data, str(tmp_path / "cache"), PAD, **settings)
    assert len(calls) == 3  # 12 sources in batches of 5
    assert translated["input_ids"] == data["input_ids"]
    assert translated["attention_mask"] == data["attention_mask"]
    assert translated["labels"] != data["labels"]

    for source, labels in zip(data["input_ids"], translated["labels"], strict=True):
        with torch.no_grad():
            generated = marian.generate(input_ids=torch.tensor([source]), num_beams=2, max_new_tokens=12)[0].tolist()
        assert generated[0] == PAD  # Marian's decoder start, dropped from the labels
        expected = generated[1:]
        expected = expected[: expected.index(EOS) + 1] if EOS in expected else expected
        assert labels == expected
        assert PAD not in labels and labels.count(EOS) <= 1
    ended = [labels for labels in translated["labels"] if labels[-1] == EOS]
    assert len(ended) >= len(data) // 2  # the trained toy teacher stops with </s>
    assert len({len(labels) for labels in translated["labels"]}) > 1  # shorter rows were padded in their batch


def test_teacher_translations_are_cached_and_keyed_by_teacher_and_settings(marian, tmp_path, monkeypatch):
    data = toy_tokenized()
    cache_dir = tmp_path / "cache"
    first = teacher_translations(marian, data, str(cache_dir), PAD, num_beams=2, max_new_tokens=12)
    [folder] = cached_folders(cache_dir)

    def no_generate(*args, **kwargs):
        raise AssertionError("the teacher translated again instead of loading its cached translations")

    monkeypatch.setattr(marian, "generate", no_generate)
    again = teacher_translations(marian, data, str(cache_dir), PAD, num_beams=2, max_new_tokens=12)
    assert again["labels"] == first["labels"] and again["input_ids"] == data["input_ids"]
    assert cached_folders(cache_dir) == [folder]
    monkeypatch.undo()

    # Other generation settings or other weights: a new folder, generated again.
    calls = count_generate_calls(monkeypatch, marian)
    teacher_translations(marian, data, str(cache_dir), PAD, num_beams=1, max_new_tokens=12)
    assert calls and len(cached_folders(cache_dir)) == 2
    changed = copy.deepcopy(marian)
    assert teacher_digest(changed) == teacher_digest(marian)
    with torch.no_grad():
        changed.model.decoder.layers[0].fc1.bias[0] += 0.5
    assert teacher_digest(changed) != teacher_digest(marian)
    changed_calls = count_generate_calls(monkeypatch, changed)
    teacher_translations(changed, data, str(cache_dir), PAD, num_beams=2, max_new_tokens=12)
    assert changed_calls and len(cached_folders(cache_dir)) == 3
    # Other sources: a new folder too.
    teacher_translations(marian, data.select(range(6)), str(cache_dir), PAD, num_beams=2, max_new_tokens=12)
    assert len(cached_folders(cache_dir)) == 4


def test_teacher_hypotheses_return_the_beams_best_first_cached_with_their_generation_settings(
    marian, tmp_path, monkeypatch
):
    data = toy_tokenized()
    cache_dir = tmp_path / "cache"
    calls = count_generate_calls(monkeypatch, marian)
    settings = dict(num_beams=3, max_new_tokens=12, batch_size=5)
    hypotheses = pseudo_targets.teacher_hypotheses(
        marian, data, str(cache_dir), PAD, num_return_sequences=3, no_repeat_ngram_size=2, **settings
    )
    assert all(call["num_return_sequences"] == 3 and call["no_repeat_ngram_size"] == 2 for call in calls)
    assert len(hypotheses) == len(data) and all(len(candidates) == 3 for candidates in hypotheses)
    for source, candidates in zip(data["input_ids"], hypotheses, strict=True):
        with torch.no_grad():
            generated = marian.generate(
                input_ids=torch.tensor([source]), num_beams=3, num_return_sequences=3, max_new_tokens=12,
                no_repeat_ngram_size=2,
            )  # fmt: skip
        assert candidates == [_as_labels(row[1:], EOS, PAD) for row in generated.tolist()]  # the beam's order
        for labels in candidates:  # no bigram twice
            assert len(set(zip(labels, labels[1:], strict=False))) == len(labels) - 1
    # The best hypotheses are what teacher_translations trains on; they come from the same beams, so
    # the settings without num_return_sequences make their own cache (another key) with the same top rows.
    best = teacher_translations(marian, data, str(cache_dir), PAD, no_repeat_ngram_size=2, **settings)
    assert best["labels"] == [candidates[0] for candidates in hypotheses]
    assert len(cached_folders(cache_dir)) == 2
    # Loaded back from the cache, not generated again; another no_repeat_ngram_size is another cache.
    monkeypatch.undo()
    calls = count_generate_calls(monkeypatch, marian)
    again = pseudo_targets.teacher_hypotheses(
        marian, data, str(cache_dir), PAD, num_return_sequences=3, no_repeat_ngram_size=2, **settings
    )
    assert again == hypotheses and calls == []
    pseudo_targets.teacher_hypotheses(
        marian, data, str(cache_dir), PAD, num_return_sequences=3, no_repeat_ngram_size=3, **settings
    )
    assert calls and len(cached_folders(cache_dir)) == 3
    with pytest.raises(ValueError, match=r"num_return_sequences=4: the beam search returns between 1 and num_beams"):
        pseudo_targets.teacher_hypotheses(marian, data, str(cache_dir), PAD, num_return_sequences=4, **settings)


def test_a_cache_with_the_wrong_number_of_rows_is_reported_as_corrupt(marian, tmp_path):
    data = toy_tokenized()
    cache_dir = tmp_path / "cache"
    teacher_translations(marian, data, str(cache_dir), PAD, num_beams=1, max_new_tokens=12)
    [folder] = cached_folders(cache_dir)
    shutil.rmtree(folder)
    datasets.Dataset.from_dict({"labels": [[5, 1]] * 3}).save_to_disk(str(folder))
    (folder / pseudo_targets.COMPLETE_MARKER).touch()
    message = rf"The cached teacher translations in {re.escape(str(folder))} hold 3 rows for 12 sources with 1 "
    with pytest.raises(ValueError, match=message + r"hypotheses each: the cache is corrupt\. Delete that folder"):
        teacher_translations(marian, data, str(cache_dir), PAD, num_beams=1, max_new_tokens=12)


def test_an_unfinished_cache_folder_is_generated_again(marian, tmp_path):
    data = toy_tokenized()
    cache_dir = tmp_path / "cache"
    first = teacher_translations(marian, data, str(cache_dir), PAD, num_beams=1, max_new_tokens=12)
    [folder] = cached_folders(cache_dir)
    (folder / pseudo_targets.COMPLETE_MARKER).unlink()  # as if the run died while writing
    again = teacher_translations(marian, data, str(cache_dir), PAD, num_beams=1, max_new_tokens=12)
    assert again["labels"] == first["labels"] and cached_folders(cache_dir) == [folder]


def test_a_translation_cut_short_goes_on_from_its_last_finished_part(marian, tmp_path, monkeypatch):
    data = toy_tokenized()
    monkeypatch.setattr(pseudo_targets, "BATCHES_PER_PART", 1)  # 12 sources, batches of 4: three parts
    settings = dict(num_beams=2, max_new_tokens=12, batch_size=4)
    whole = teacher_translations(marian, data, str(tmp_path / "whole"), PAD, **settings)

    cache_dir = tmp_path / "cut"
    original = marian.generate

    def dies_in_the_third_batch(*args, **kwargs):
        if len(started) == 2:
            raise RuntimeError("the run is cut short")
        started.append(kwargs)
        return original(*args, **kwargs)

    started = []
    monkeypatch.setattr(marian, "generate", dies_in_the_third_batch)
    with pytest.raises(RuntimeError, match="the run is cut short"):
        teacher_translations(marian, data, str(cache_dir), PAD, **settings)
    assert cached_folders(cache_dir) == []
    [parts_dir] = cache_dir.iterdir()
    assert sorted(path.name for path in parts_dir.iterdir()) == ["part-00000.json", "part-00001.json"]

    monkeypatch.setattr(marian, "generate", original)
    calls = count_generate_calls(monkeypatch, marian)
    resumed = teacher_translations(marian, data, str(cache_dir), PAD, **settings)
    assert len(calls) == 1  # only the third part is translated
    assert resumed["labels"] == whole["labels"]
    assert [path.name for path in cache_dir.iterdir()] == [cached_folders(cache_dir)[0].name]  # parts cleaned up

    # A part saved for other sources (e.g. under another batch size) is translated again.
    monkeypatch.setattr(marian, "generate", original)
    [folder] = cached_folders(cache_dir)
    shutil.rmtree(folder)
    parts_dir.mkdir()
    (parts_dir / "part-00000.json").write_text(json.dumps({"indices": [0, 1, 2], "labels": [[5, 1]] * 3}))
    calls = count_generate_calls(monkeypatch, marian)
    again = teacher_translations(marian, data, str(cache_dir), PAD, **settings)
    assert len(calls) == 3 and again["labels"] == whole["labels"]


@pytest.mark.parametrize(
    "tokens, eos, expected",
    [
        ([5, 6, 1, 0, 0], 1, [5, 6, 1]),  # up to and including eos, padding dropped
        ([5, 6, 1, 7, 1], 1, [5, 6, 1]),  # the first eos ends it
        ([1, 5], 1, [1]),
        ([5, 6, 0, 0], 1, [5, 6]),  # cut short at max_new_tokens: no eos, padding dropped
        ([5, 6, -100], 1, [5, 6]),
        ([5, 6, 7], 1, [5, 6, 7]),
        ([5, 2, 7, 1], [1, 2], [5, 2]),  # several eos ids
        ([], 1, []),
    ],
)
def test_as_labels(tokens, eos, expected):
    assert _as_labels(tokens, eos, 0) == expected


# 6. The Bible default -----------------------------------------------------------------------------------------------


def test_clean_verse_keeps_the_words_and_drops_notes():
    web = (
        '<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> <w lemma="strong:H7225">beginning</w>, '
        '<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>The '
        'Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).</note><w lemma="strong:H1254">created</w> '
        '<w>the</w> <w>earth</w>. <div eID="gen25" type="x-p"/>'
    )
    assert bible.clean_verse(web) == "In the beginning, God created the earth."
    assert bible.clean_verse("<w>Jesus</w><w>wept</w>.") == "Jesus wept."  # a tag can be the only word boundary
    psalm = (
        '<div type="x-milestone" sID="pv4877"/><title canonical="true" type="psalm">A Psalm by David.</title> '
        '<l level="1" sID="gen7861"/>Yahweh, how <w lemma="strong:H1732">my</w> adversaries have increased!'
    )
    assert bible.clean_verse(psalm) == "A Psalm by David. Yahweh, how my adversaries have increased!"
    assert bible.clean_verse('<title type="section">The Creation</title>In the beginning') == "In the beginning"
    assert bible.clean_verse('<note n="a"/>God<note>a note</note> made <w>it</w> .') == "God made it."
    assert bible.clean_verse("God&apos;s &amp; men&#8217;s <w>house</w> ;") == "God's & men’s house;"
    assert bible.clean_verse('¡ <w lemma="x">OH</w> Jehová , <w>cuánto</w> ? ¿ <w>Conque</w> ?') == (
        "¡OH Jehová, cuánto? ¿Conque?"
    )
    assert bible.clean_verse('<note type="x">only a note</note> ') == ""


def test_undo_drop_cap():
    assert bible.undo_drop_cap("EN el principio crió Dios") == "En el principio crió Dios"
    assert bible.undo_drop_cap("¡OH Jehová, cuánto se han multiplicado") == "¡Oh Jehová, cuánto se han multiplicado"
    assert bible.undo_drop_cap("ÉSTOS son los nombres") == "Éstos son los nombres"
    assert bible.undo_drop_cap("Y dijo Dios") == "Y dijo Dios"
    assert bible.undo_drop_cap("Y") == "Y"
    assert bible.undo_drop_cap("En el principio") == "En el principio"


@pytest.fixture
def fast_pysword(monkeypatch):
    """pysword decompresses a whole block for every verse; the blocks are the same, so keep them (same text)."""
    from pysword.bible import ZTextModule

    original, blocks = ZTextModule._decompress, {}

    def decompress(self, data):
        if data not in blocks:
            blocks[data] = original(self, data)
        return blocks[data]

    monkeypatch.setattr(ZTextModule, "_decompress", decompress)


def test_verse_pairs_of_genesis_from_the_installed_modules(fast_pysword):
    # No skip: without the modules sword_path() raises its FileNotFoundError naming the install command.
    path = bible.sword_path()
    pairs = bible.verse_pairs(path, books={"Gen"})
    assert set(pairs) == {"en", "es"} and len(pairs["en"]) == len(pairs["es"])
    assert 1400 < len(pairs["en"]) <= 1533  # Genesis has 1533 verses; a few pairs are dropped by length
    assert (pairs["en"][0], pairs["es"][0]) == (
        "In the beginning, God created the heavens and the earth.",
        "En el principio crió Dios los cielos y la tierra.",
    )
    assert pairs["en"][1].startswith("The earth was formless and empty.")
    assert pairs["es"][1].startswith("Y la tierra estaba desordenada y vacía")
    for en, es in zip(pairs["en"], pairs["es"], strict=True):
        assert en and es and "<" not in en + es and "  " not in en + es
        assert max(len(en), len(es)) <= bible.MAX_LENGTH_RATIO * min(len(en), len(es))
    assert pairs["en"][-1].startswith("So Joseph died")  # Gen 50:26
    assert pairs["es"][-1].startswith("Y murió José")


def test_a_verse_cache_cut_short_is_read_again_and_rewritten_whole(tmp_path, monkeypatch, caplog):
    # json.loads of a cache cut by a kill -9 mid-write failed every later run with a JSONDecodeError.
    monkeypatch.setenv("NLPKD_CACHE", str(tmp_path))
    verses = {"en": {"Gen 1:1": "In the beginning"}, "es": {"Gen 1:1": "En el principio"}}
    monkeypatch.setattr(bible, "read_verses", lambda module, *args: verses["en" if "eng" in module else "es"])
    path = bible.sword_path()
    cache = bible._cache_file(path)
    cache.write_text('{"en": ["In the beg', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="nlpkd.bible"):
        pairs = bible.verse_pairs(path)
    assert pairs == {"en": ["In the beginning"], "es": ["En el principio"]}
    assert "is cut short: reading the Bibles again" in caplog.text
    assert json.loads(cache.read_text(encoding="utf-8")) == pairs
    assert [file.name for file in tmp_path.iterdir()] == [cache.name]  # no partial file left


def test_a_target_tokenizer_save_cut_short_is_not_taken_for_a_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(translation, "save_languages", lambda *args, **kwargs: pytest.fail("killed while saving"))
    with pytest.raises(pytest.fail.Exception):
        train_target_tokenizer(SPANISH, 60, "es", str(tmp_path / "es"))
    assert not (tmp_path / "es" / "tokenizer.json").exists()  # target_tokenizer_once trains it again


def test_sword_path_names_the_install_command_when_the_modules_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SWORD_PATH", str(tmp_path / "sword"))
    monkeypatch.setattr(bible, "__file__", str(tmp_path / "repo" / "nlpkd" / "bible.py"))  # the repo's .assets
    monkeypatch.setattr(bible.Path, "home", lambda: tmp_path / "home")
    real_has_module = bible._has_module  # /usr/share/sword of this machine is not looked at either
    monkeypatch.setattr(
        bible, "_has_module", lambda path, name: tmp_path in path.parents and real_has_module(path, name)
    )
    with pytest.raises(FileNotFoundError) as raised:
        bible.sword_path()
    message = str(raised.value)
    assert "needs the SWORD modules engWEB2015eb and spaRV1909eb" in message
    assert "apt-get download sword-text-web sword-text-sparv" in message and "SWORD_PATH" in message
    for candidate in (tmp_path / "sword", tmp_path / "repo/.assets/sword/usr/share/sword", tmp_path / "home/.sword"):
        assert str(candidate) in message

    # Both modules (any spelling of the .conf) under $SWORD_PATH: that library is used.
    (tmp_path / "sword" / "mods.d").mkdir(parents=True)
    (tmp_path / "sword" / "mods.d" / "engweb2015eb.conf").touch()
    with pytest.raises(FileNotFoundError):
        bible.sword_path()  # one module is not enough
    (tmp_path / "sword" / "mods.d" / "spaRV1909eb.conf").touch()
    assert bible.sword_path() == str(tmp_path / "sword")


# 7. The recipe ------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Nothing a recipe writes by default (outputs/...) lands in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory) -> str:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.tsv", PAIRS)


def recipe_flags(teacher_dir: str, train_file: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--teacher_model_name_or_path", teacher_dir,
        "--train_file", train_file,
        "--validation_size", "4",
        "--test_size", "8",
        "--max_train_samples", "48",
        "--max_source_length", "16",
        "--max_target_length", "12",
        "--n_bootstrap", "10",
        "--generation_num_beams", "2",
        "--teacher_cache_dir", str(tmp_path / "teachers"),
        "--tokenizer_cache_dir", str(tmp_path / "tokenizers"),
        "--pseudo_target_cache_dir", str(tmp_path / "pseudo_targets"),
        "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2",
        "--per_device_train_batch_size", "8",
        "--student_num_layers", "1",
        "--student_decoder_layers", "1",
        "--student_hidden_size", "32",
        "--student_num_heads", "4",
        "--student_intermediate_size", "37",
        "--student_init", "teacher_layers",
        "--save_strategy", "no",
        "--use_cpu", "true",
        *extra,
    ]  # fmt: skip


def read_results(output_dir: Path, returned: dict) -> dict:
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(returned))
    return saved


def check_results(saved: dict) -> None:
    # The teacher decodes with beam 2 (--generation_num_beams), the student and the baseline greedily
    # (student_num_beams 1), and the student is scored and timed with beam 2 as well.
    decodings = {"teacher": "beam 2", "student": "greedy", "baseline": "greedy", "student_beam2": "beam 2"}
    assert {name: saved[name]["decoding"] for name in decodings} == decodings
    assert saved["speedup_decoding"] == "student greedy against teacher beam 2, batch 1"
    for name in decodings:
        assert set(MODEL_KEYS) <= set(saved[name]), name
        assert all(math.isfinite(saved[name][key]) and saved[name][key] >= 0 for key in MODEL_KEYS), name
        assert all(saved[name][key] > 0 for key in ("params", "size_mb", "latency_ms_b1")), name
        assert 0 <= saved[name]["bleu"] <= 100 and 0 <= saved[name]["chrf"] <= 100
    assert saved["student"]["params"] < saved["teacher"]["params"]
    assert saved["baseline"]["params"] == saved["student"]["params"]
    # The models were timed in turns: the speed-up is the median of the per-round ratios, not the ratio of the
    # median latencies (which a load present in some rounds moves).
    assert len(saved["speed_rounds"]) == report.SPEED_ROUNDS
    assert all(set(round_) == set(decodings) for round_ in saved["speed_rounds"])
    # The teacher's two hypotheses per source were checked and one of them kept for each source that had a clean one.
    targets = saved["sequence_level_targets"]
    assert (targets["sources"], targets["hypotheses"], targets["references_instead"]) == (48, 96, 0)
    assert targets["targets"] + targets["sources_without_clean_target"] == 48
    assert sum(targets["all_hypotheses_problems"].values()) <= 96
    assert targets["selection"] == "closest" and targets["per_source"] == 1
    assert set(saved["wall_seconds"]) == {
        "sequence_level_data",
        "student_training",
        "baseline_training",
        *(f"test_translations_{name}" for name in decodings),
    }
    assert all(seconds > 0 for seconds in saved["wall_seconds"].values())
    recomputed = report.median_speed(saved["speed_rounds"])["student"]["speedup_b1"]
    assert saved["speedup"] == saved["student"]["speedup_b1"] == pytest.approx(recomputed, rel=1e-12)
    if saved["teacher"]["bleu"] > 0:
        assert saved["retention"] == pytest.approx(saved["student"]["bleu"] / saved["teacher"]["bleu"])
    else:  # a teacher trained for 2 steps may score 0: no retention (and no ZeroDivisionError after training)
        assert saved["retention"] is None
    assert saved["num_test_pairs"] == 8 and saved["sequence_level_kd"] is True


def test_recipe_distils_a_marian_teacher_and_reuses_its_translations(
    marian_dir, pairs_tsv, tmp_path, capsys, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="nlpkd.progress")
    flags = recipe_flags(marian_dir, pairs_tsv, tmp_path)
    saved = read_results(tmp_path / "out", recipe.main([*flags, "--disable_tqdm", "true"]))  # quiet
    check_results(saved)
    assert saved["teacher"]["bleu"] > 0  # the toy teacher translates some words
    assert saved["teacher"]["chrf_ci"] > 0
    table = capsys.readouterr().out
    assert any(line.startswith("teacher ") for line in table.splitlines())

    output_dir = tmp_path / "out"
    student = MarianMTModel.from_pretrained(output_dir)
    assert student.generation_config.num_beams == 1  # the decoding it was measured with
    card = (output_dir / "README.md").read_text()
    assert "- decoding: student greedy against teacher beam 2, batch 1: the speed-up and the student's scores" in card
    assert "| model | decoding | BLEU |" in card
    without = saved["sequence_level_targets"]["sources_without_clean_target"]
    assert f"checked against bounds read off the references ({without} sources had no clean hypothesis)" in card
    config = student.config
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (1, 1, 32)
    assert isinstance(MarianMTModel.from_pretrained(output_dir / "baseline"), MarianMTModel)
    assert not (tmp_path / "teachers").exists()  # a translation teacher is used as it is
    assert not (tmp_path / "tokenizers").exists()  # with its own tokenizer

    # Stage 2 cached the teacher's translations; a second run (another training seed) loads them.
    [folder] = cached_folders(tmp_path / "pseudo_targets")
    stamp = (folder / pseudo_targets.COMPLETE_MARKER).stat().st_mtime_ns
    scored = []

    def score_teacher_zero(translations, references, n_bootstrap):  # the first model scored is the teacher
        results = score_translations(translations, references, n_bootstrap)
        scored.append(dict(results))
        return {**results, "bleu": 0.0} if len(scored) == 1 else results

    monkeypatch.setattr(recipe, "score_translations", score_teacher_zero)
    assert recipe_progress(caplog) == ([], [])  # quiet
    again_flags = [*flags, "--no_baseline", "true", "--seed", "7"]  # the default shows progress
    again = read_results(tmp_path / "out", recipe.main(again_flags))
    speed, stages = recipe_progress(caplog)
    assert speed_rounds_done(speed[-1], "teacher, student, student_beam2")
    assert stages == [  # none in the first run
        ["teacher", "translating the test sources"],
        ["student", "translating the test sources"],
        ["student_beam2", "translating the test sources"],
    ]
    assert cached_folders(tmp_path / "pseudo_targets") == [folder]
    assert (folder / pseudo_targets.COMPLETE_MARKER).stat().st_mtime_ns == stamp
    assert "baseline" not in again
    assert scored[0]["bleu"] == saved["teacher"]["bleu"]  # the same teacher on the same test pairs
    assert scored[0]["chrf"] == again["teacher"]["chrf"] == saved["teacher"]["chrf"]
    assert again["teacher"]["bleu"] == 0 and again["retention"] is None  # reported, not a ZeroDivisionError

    # Settings are chosen on the validation pairs: --eval_split validation scores those (4) instead of the test pairs.
    monkeypatch.setattr(recipe, "score_translations", score_translations)
    caplog.clear()
    tuned = read_results(tmp_path / "out", recipe.main([*again_flags, "--eval_split", "validation"]))
    assert (tuned["eval_split"], tuned["num_test_pairs"]) == ("validation", 4) and saved["eval_split"] == "test"
    assert recipe_progress(caplog)[1] == [
        [name, "translating the validation sources"] for name in ("teacher", "student", "student_beam2")
    ]
    assert {"validation_translations_teacher", "validation_translations_student"} <= set(tuned["wall_seconds"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "      split: validation\n" in card and "Quality on the held-out validation split" in card


def test_recipe_builds_trains_and_caches_an_encoder_decoder_teacher(bert_dir, pairs_tsv, tmp_path, monkeypatch):
    flags = recipe_flags(bert_dir, pairs_tsv, tmp_path, "--target_vocab_size", "60", "--teacher_decoder_layers", "1")
    saved = read_results(tmp_path / "out", recipe.main(flags))
    check_results(saved)

    [tokenizer_dir] = list((tmp_path / "tokenizers").iterdir())
    assert tokenizer_dir.name.startswith("es-")
    target_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (target_tokenizer.pad_token_id, target_tokenizer.eos_token_id, target_tokenizer.bos_token_id) == (0, 1, 3)
    assert json.loads((tokenizer_dir / LANGUAGES_FILE).read_text()) == {"target": "es"}
    assert (tmp_path / "out" / "target_tokenizer" / "tokenizer.json").is_file()

    # Two teachers cached: the decoder stage (the pretrained encoder frozen) and the whole teacher trained on from it.
    pretrained = BertModel.from_pretrained(bert_dir).state_dict()
    stages = {}
    for path in teachers_in(tmp_path / "teachers"):
        encoder = EncoderDecoderModel.from_pretrained(path).encoder.state_dict()
        frozen = same_encoder(encoder, pretrained)
        stages["decoder" if frozen else "whole"] = path
    assert sorted(stages) == ["decoder", "whole"]
    teacher_dir = stages["whole"]
    teacher = EncoderDecoderModel.from_pretrained(teacher_dir)
    assert teacher.config.decoder.num_hidden_layers == 1 and teacher.config.decoder.vocab_size == len(target_tokenizer)
    assert teacher.config.decoder_start_token_id == 3 and teacher.generation_config.decoder_start_token_id == 3
    student = EncoderDecoderModel.from_pretrained(tmp_path / "out")
    assert student.config.encoder.num_hidden_layers == 1 and student.config.decoder.num_hidden_layers == 1

    # A second run loads the teacher and the tokenizer instead of training them again.
    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(recipe, "train_target_tokenizer", lambda *a, **k: pytest.fail("trained the tokenizer again"))
    monkeypatch.setattr(recipe, "build_encoder_decoder", lambda *a, **k: pytest.fail("built the teacher again"))
    [translations] = cached_folders(tmp_path / "pseudo_targets")
    again = recipe.main([*flags, "--no_baseline", "true"])
    assert teachers_in(tmp_path / "teachers") == sorted(stages.values())
    # The teacher loaded back is the teacher that translated: its translations are found, not made again.
    assert cached_folders(tmp_path / "pseudo_targets") == [translations]
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert list((tmp_path / "tokenizers").iterdir()) == [tokenizer_dir]
    assert again["teacher"]["bleu"] == saved["teacher"]["bleu"]


def test_a_kept_encoder_decoder_teacher_loads_as_it_was_trained(bert_dir, target_tokenizer_dir, tmp_path):
    """A teacher stage is kept without the pooler it was built without, so that the next stage (or a run resumed
    from its checkpoint) sees the parameters it was trained with and its optimizer state fits them."""
    built = build_encoder_decoder(bert_dir, AutoTokenizer.from_pretrained(target_tokenizer_dir), 1, seed=0)
    names = [name for name, _ in built.named_parameters()]
    assert not any(".pooler." in name for name in names)
    optimizer = torch.optim.AdamW(built.parameters())
    built(**toy_pair_batch()).loss.backward()
    optimizer.step()
    built.save_pretrained(tmp_path / "teacher")
    # The trap: the plain loader adds a fresh pooler, and an optimizer state saved for the trained model won't load.
    plain = EncoderDecoderModel.from_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="doesn't match the size"):
        torch.optim.AdamW(plain.parameters()).load_state_dict(optimizer.state_dict())

    loaded = load_encoder_decoder(tmp_path / "teacher")
    assert [name for name, _ in loaded.named_parameters()] == names
    torch.optim.AdamW(loaded.parameters()).load_state_dict(optimizer.state_dict())
    built.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**toy_pair_batch()).logits, built(**toy_pair_batch()).logits)

    # A checkpoint that has a pooler keeps it, with its weights.
    pretrained = BertModel.from_pretrained(bert_dir)
    EncoderDecoderModel(encoder=pretrained, decoder=built.decoder).save_pretrained(tmp_path / "with_pooler")
    kept = load_encoder_decoder(tmp_path / "with_pooler").encoder.pooler
    torch.testing.assert_close(kept.dense.weight, pretrained.pooler.dense.weight)


def toy_pair_batch() -> dict:
    return dict(
        input_ids=torch.tensor([[2, 5, 6, 3]]),
        decoder_input_ids=torch.tensor([[3, 4, 5]]),
        labels=torch.tensor([[4, 5, 1]]),
    )


def teachers_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if (path / "config.json").is_file())


def same_encoder(encoder: dict, pretrained: dict) -> bool:
    """The pretrained weights, pooler aside (the teacher has none; a reloaded EncoderDecoderModel makes a new one)."""
    shared = [name for name in encoder if name in pretrained and not name.startswith("pooler.")]
    return len(shared) > 10 and all(torch.equal(encoder[name], pretrained[name]) for name in shared)


def test_without_the_whole_teacher_stage_the_decoder_stage_is_the_teacher(bert_dir, pairs_tsv, tmp_path):
    flags = recipe_flags(bert_dir, pairs_tsv, tmp_path, "--target_vocab_size", "60", "--teacher_decoder_layers", "1")
    recipe.main([*flags, "--teacher_encoder_epochs", "0", "--no_baseline", "true"])
    [teacher_dir] = teachers_in(tmp_path / "teachers")
    encoder = EncoderDecoderModel.from_pretrained(teacher_dir).encoder.state_dict()
    pretrained = BertModel.from_pretrained(bert_dir).state_dict()
    assert same_encoder(encoder, pretrained)


def test_recipe_rejects_a_pair_file_without_the_target_column_before_training(marian_dir, bert_dir, tmp_path):
    path = write_pairs(tmp_path / "pairs.tsv", PAIRS[:40], columns=("en", "fr"))
    for teacher in (marian_dir, bert_dir):
        with pytest.raises(ValueError, match=r"pairs.tsv' has no column for \['es'\] \(columns: \['en', 'fr'\]\)"):
            recipe.main(recipe_flags(teacher, path, tmp_path))
    for folder in ("teachers", "tokenizers", "pseudo_targets", "out"):
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.parametrize("length_field", ["max_source_length", "max_target_length"])
def test_recipe_refuses_a_length_above_the_teachers_positions_before_training(
    bert_dir, pairs_tsv, tmp_path, length_field
):
    flags = recipe_flags(bert_dir, pairs_tsv, tmp_path, f"--{length_field}", "65")  # the new decoder copies 64 too
    with pytest.raises(ValueError, match=rf"{length_field}=65 exceeds the teacher's max_position_embeddings=64"):
        recipe.main(flags)
    for folder in ("teachers", "tokenizers", "pseudo_targets", "out"):
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--pseudo_target_hypotheses", "3"],  # the beam (--generation_num_beams 2) keeps 2
            r"pseudo_target_hypotheses=3 is more than the generation_num_beams=2 the teacher's beam search keeps",
        ),
        (
            ["--pseudo_target_hypotheses", "1", "--pseudo_targets_per_source", "2"],
            r"pseudo_targets_per_source=2 is more than the 1 hypotheses per source they are chosen from",
        ),
        (
            ["--pseudo_target_selection", "best"],
            r"pseudo_target_selection.*invalid choice: 'best' \(choose from 'top', 'closest'\)",
        ),
        (["--student_num_beams", "0"], r"student_num_beams=0: it must be at least 1"),
        (["--eval_split", "dev"], r"eval_split.*invalid choice: 'dev' \(choose from 'test', 'validation'\)"),
    ],
)
def test_recipe_refuses_bad_sequence_level_settings_before_training(
    bert_dir, pairs_tsv, tmp_path, extra, message, capsys
):
    flags = recipe_flags(bert_dir, pairs_tsv, tmp_path, *extra)
    with pytest.raises((ValueError, SystemExit)) as raised:
        recipe.main(flags)
    assert re.search(message, str(raised.value) + capsys.readouterr().err)
    for folder in ("teachers", "tokenizers", "pseudo_targets", "out"):
        assert not (tmp_path / folder).exists(), folder
