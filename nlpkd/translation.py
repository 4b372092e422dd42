"""Translation data for the recipes: sentence pairs as `source` + `target`, tokenizers, and the default teacher."""

import json
import os
from pathlib import Path

import datasets
import numpy as np
from transformers import DataCollatorForSeq2Seq
from transformers.models.bart.modeling_bart import shift_tokens_right

from .checkpoints import save_whole
from .data import read_table
from .positions import IGNORE_INDEX
from .progress import Progress

PAIR_COLUMNS = ("source", "target")
TARGET_TOKENIZER_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "bos_token": "<s>"}
LANGUAGES_FILE = "nlpkd_languages.json"
MAX_UNKNOWN_RATE = 0.05


def load_translation_pairs(
    source_lang: str,
    target_lang: str,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    validation_size: int = 500,
    test_size: int = 1000,
    seed: int = 42,
    show_progress: bool = True,
) -> datasets.DatasetDict:
    """Train/validation/test splits of `source` → `target` sentence pairs, or a ValueError naming what is wrong.

    The source is `dataset_name` (a hub dataset with a `translation` column of {lang: text} dicts, as the WMT and
    OPUS datasets have, or with one column per language), else local files (.tsv/.csv/.json/.jsonl with one
    column per language code, e.g. `en` and `es`), else the embedded English–Spanish Bible verses
    (`nlpkd.bible`, needs source_lang='en' and target_lang='es'). Missing validation/test splits are cut from the
    shuffled train split with `seed` (`validation_size`, `test_size` pairs). With `show_progress`, reading the
    Bibles (the first time) logs its progress.
    """
    if dataset_name is not None and train_file is not None:
        raise ValueError(
            f"Give dataset_name or train_file, not both: got dataset_name={dataset_name!r}, train_file={train_file!r}."
        )
    if dataset_name is not None:
        loaded = datasets.load_dataset(dataset_name, dataset_config_name)
        splits = {
            name: _pairs(_rows(loaded[name]), source_lang, target_lang, f"dataset {dataset_name!r} split {name!r}")
            for name in loaded
        }
    elif train_file is not None:
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        splits = {
            name: _pairs(_table_rows(path, f"{name}_file={path!r}"), source_lang, target_lang, f"{name}_file={path!r}")
            for name, path in files.items()
            if path is not None
        }
    else:
        if (source_lang, target_lang) != ("en", "es"):
            raise ValueError(
                f"The embedded default data is English→Spanish Bible verses, but source_lang={source_lang!r} and "
                f"target_lang={target_lang!r}: pass --source_lang en --target_lang es, or your own pairs with "
                "--dataset_name or --train_file."
            )
        splits = {"train": _bible_pairs(show_progress)}
    return _complete_splits(splits, validation_size, test_size, seed)


def _bible_pairs(show_progress: bool) -> datasets.Dataset:
    from .bible import verse_pairs

    pairs = verse_pairs(show_progress=show_progress)
    return datasets.Dataset.from_dict({"source": pairs["en"], "target": pairs["es"]})


def _rows(dataset: datasets.Dataset) -> list[dict]:
    if "translation" in dataset.column_names:
        return list(dataset["translation"])
    return dataset.to_list()


def _table_rows(path: str, source: str) -> list[dict]:
    return read_table(Path(path), source).to_dict("records")


def _pairs(rows: list[dict], source_lang: str, target_lang: str, source: str) -> datasets.Dataset:
    columns = sorted(rows[0]) if rows else []
    missing = [lang for lang in (source_lang, target_lang) if lang not in columns]
    if missing:
        raise ValueError(
            f"{source} has no column for {missing} (columns: {columns}): name the columns by language code, or pass "
            "--source_lang/--target_lang matching them."
        )
    pairs = {"source": [], "target": []}
    for line, row in enumerate(rows, start=1):
        for lang, column in ((source_lang, "source"), (target_lang, "target")):
            text = row[lang]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"{source} row {line} has an empty or missing {lang!r} text ({text!r}): remove the row or fill it."
                )
            pairs[column].append(text.strip())
    return datasets.Dataset.from_dict(pairs)


def _complete_splits(splits: dict, validation_size: int, test_size: int, seed: int) -> datasets.DatasetDict:
    train = splits["train"].shuffle(seed=seed)
    for name, size in (("test", test_size), ("validation", validation_size)):
        if name not in splits:
            if len(train) <= size:
                raise ValueError(
                    f"Cutting a {name} split of {size} pairs needs more than {size} training pairs, got {len(train)}: "
                    f"pass a {name}_file or a smaller --{name}_size."
                )
            splits[name], train = train.select(range(size)), train.select(range(size, len(train)))
    splits["train"] = train
    return datasets.DatasetDict({name: splits[name] for name in ("train", "validation", "test")})


def train_target_tokenizer(texts, vocab_size: int, language: str, output_dir: str):
    """A SentencePiece (unigram, Metaspace) tokenizer trained on `texts`, saved to `output_dir` with its language.

    Ids: <pad> 0, </s> 1, <unk> 2, <s> 3 (the decoder start). Every encoded text ends with </s>.
    """
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(TARGET_TOKENIZER_SPECIALS.values())
    backend = SentencePieceUnigramTokenizer()
    backend.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    backend = backend._tokenizer  # the `tokenizers.Tokenizer` inside the training wrapper
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **TARGET_TOKENIZER_SPECIALS)

    def save(folder: str) -> None:
        tokenizer.save_pretrained(folder)
        save_languages(folder, target=language)

    save_whole(save, output_dir, marker="tokenizer.json")  # what target_tokenizer_once looks for, moved in last
    return tokenizer


def save_languages(directory: str, **languages: str) -> None:
    """Record which language a saved tokenizer (or model) reads or writes, for `check_languages`."""
    path = Path(directory) / LANGUAGES_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    recorded.update(languages)
    os.makedirs(directory, exist_ok=True)
    path.write_text(json.dumps(recorded))


def check_languages(directory: str, tokenizer=None, **languages: str) -> None:
    """Raise a ValueError when `directory` records other languages than those asked for (e.g. a cached es
    tokenizer reused for --target_lang fr), or when `tokenizer` names other languages (Marian's `source_lang` and
    `target_lang`)."""
    path = Path(directory) / LANGUAGES_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for role in ("source", "target"):
        named = getattr(tokenizer, f"{role}_lang", None)
        if isinstance(named, str) and role not in recorded:
            recorded[role] = named
    for role, language in languages.items():
        if role in recorded and recorded[role] != language:
            raise ValueError(
                f"{directory} was made for {role} language {recorded[role]!r}, but {role}_lang={language!r}: pass "
                f"--{role}_lang {recorded[role]} or a tokenizer/teacher for {language!r}."
            )


def check_coverage(tokenizer, texts: list[str], field: str) -> None:
    """Raise a ValueError when `tokenizer` maps more than MAX_UNKNOWN_RATE of the tokens of `texts` to unknown:
    the tokenizer was made for another language or script than the data's."""
    if tokenizer.unk_token_id is None:
        return
    ids = [token for text in texts for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    rate = sum(token == tokenizer.unk_token_id for token in ids) / max(len(ids), 1)
    if rate > MAX_UNKNOWN_RATE:
        raise ValueError(
            f"The {field} tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) reads {rate:.0%} of the "
            f"{field} tokens as {tokenizer.unk_token}: it does not match the {field} language. Pass a tokenizer (or "
            f"teacher) for that language, or check --{field}_lang."
        )


def tokenize_pairs(
    dataset: datasets.Dataset,
    source_tokenizer,
    target_tokenizer,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> datasets.Dataset:
    """`input_ids`/`attention_mask` from `source_prefix` + `source`, `labels` from `target` (truncated, ending with
    the target's eos). One tokenizer for both sides (Marian, T5, mBART) encodes the targets as `text_target`."""

    def encode(batch):
        sources = [source_prefix + text for text in batch["source"]]
        features = source_tokenizer(sources, max_length=max_source_length, truncation=True)
        if target_tokenizer is source_tokenizer:
            targets = source_tokenizer(text_target=batch["target"], max_length=max_target_length, truncation=True)
        else:
            targets = target_tokenizer(batch["target"], max_length=max_target_length, truncation=True)
        features["labels"] = targets["input_ids"]
        features.pop("token_type_ids", None)
        return features

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def build_encoder_decoder(
    encoder_path: str, target_tokenizer, decoder_layers: int, seed: int, freeze_encoder: bool = False
):
    """A BERT-style translation teacher: the pretrained encoder at `encoder_path` and a fresh BERT decoder of the
    encoder's width with cross-attention, over the target tokenizer's vocabulary (an `EncoderDecoderModel`).

    `freeze_encoder` keeps the pretrained encoder as it is (no gradients): only the decoder, its cross-attention
    included, learns. Measured here: fine-tuning MiniLM at the new decoder's learning rate (3e-4) collapsed its
    outputs (mean norm 8.5 -> 0.35, nearly the same vector for every token) within 2 epochs, and the decoder
    learned a Spanish LM that ignored the source."""
    from transformers import AutoConfig, AutoModel, BertConfig, BertLMHeadModel, EncoderDecoderModel, set_seed

    set_seed(seed)
    encoder_config = AutoConfig.from_pretrained(encoder_path)
    decoder_config = BertConfig(
        vocab_size=len(target_tokenizer),
        hidden_size=encoder_config.hidden_size,
        num_hidden_layers=decoder_layers,
        num_attention_heads=encoder_config.num_attention_heads,
        intermediate_size=encoder_config.intermediate_size,
        max_position_embeddings=encoder_config.max_position_embeddings,
        pad_token_id=target_tokenizer.pad_token_id,
        is_decoder=True,
        add_cross_attention=True,
    )
    encoder = AutoModel.from_pretrained(encoder_path, add_pooling_layer=False)
    if freeze_encoder:
        encoder.requires_grad_(False)
    model = EncoderDecoderModel(encoder=encoder, decoder=BertLMHeadModel(decoder_config))
    set_target_token_ids(model, target_tokenizer)
    return model


def load_encoder_decoder(path: str):
    """An `EncoderDecoderModel` as it was saved: `EncoderDecoderModel.from_pretrained` gives a BERT encoder a new,
    randomly initialised pooler even when the checkpoint has none (as in `build_encoder_decoder`'s teachers). The
    pooler is never used by the forward pass, but it changes the parameter list, so a run resumed from a checkpoint
    of the saved model would fail to load its optimizer state ("a parameter group that doesn't match the size")."""
    from transformers import EncoderDecoderModel

    model, info = EncoderDecoderModel.from_pretrained(path, output_loading_info=True)
    if getattr(model.encoder, "pooler", None) is not None and "encoder.pooler.dense.weight" in info["missing_keys"]:
        model.encoder.pooler = None
    return model


def set_target_token_ids(model, target_tokenizer) -> None:
    """Decoder start, pad and eos ids of the target tokenizer, in the config and the generation config."""
    ids = dict(
        decoder_start_token_id=target_tokenizer.bos_token_id,
        pad_token_id=target_tokenizer.pad_token_id,
        eos_token_id=target_tokenizer.eos_token_id,
    )
    for config in (model.config, model.generation_config):
        for name, value in ids.items():
            setattr(config, name, value)


class Seq2SeqCollator(DataCollatorForSeq2Seq):
    """Pads sources and labels (with -100) and adds `decoder_input_ids`, the labels shifted right behind the
    decoder start token, so that every model in a step (student, teacher, baseline) reads the same decoder inputs
    whether or not a loss pops the labels first."""

    def __init__(self, tokenizer, decoder_start_token_id: int, pad_token_id: int, **kwargs):
        super().__init__(tokenizer, label_pad_token_id=IGNORE_INDEX, **kwargs)
        self.decoder_start_token_id = decoder_start_token_id
        self.decoder_pad_token_id = pad_token_id

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        if batch.get("labels") is not None and "decoder_input_ids" not in batch:  # unlabelled: no shift
            batch["decoder_input_ids"] = shift_tokens_right(
                batch["labels"], self.decoder_pad_token_id, self.decoder_start_token_id
            )
        return batch


def translate(
    model,
    source_tokenizer,
    target_tokenizer,
    sources: list[str],
    batch_size: int = 64,
    max_source_length: int = 128,
    max_length_ratio: float | None = None,
    show_progress: bool = True,
    description: str = "translating",
    **generate_kwargs,
) -> list[str]:
    """Translations of `sources` by `model.generate(**generate_kwargs)`, in order (batched by length for speed;
    with `max_length_ratio`, each batch's `max_new_tokens` capped as in `nlpkd.pseudo_targets.length_limit`).
    With `show_progress`, the source tokens done and the time left are logged under `description`."""
    from .pseudo_targets import generate_by_length

    ids = source_tokenizer(sources, truncation=True, max_length=max_source_length)["input_ids"]
    progress = Progress(description, sum(map(len, ids)), "source tokens", show_progress)
    rows = generate_by_length(
        model, ids, source_tokenizer.pad_token_id, batch_size, max_length_ratio, progress=progress, **generate_kwargs
    )
    return [text.strip() for text in target_tokenizer.batch_decode(rows, skip_special_tokens=True)]


def score_translations(translations: list[str], references: list[str], n_bootstrap: int = 1000) -> dict:
    """BLEU and chrF (sacrebleu, through the shipped metric module) with bootstrap 95 % half-widths."""
    from .metrics import load_metric

    return load_metric("sacrebleu").compute(predictions=translations, references=references, n_bootstrap=n_bootstrap)


def translation_metrics(target_tokenizer, n_bootstrap: int = 1):
    """A `compute_metrics` for `Seq2SeqTrainer(..., args=...predict_with_generate=True)`: decodes the generated ids
    and the labels with `target_tokenizer` and returns BLEU and chrF (sacrebleu)."""

    def compute_metrics(prediction) -> dict[str, float]:
        generated, labels = prediction.predictions, prediction.label_ids
        if isinstance(generated, tuple):
            generated = generated[0]
        pad = target_tokenizer.pad_token_id
        generated = np.where(generated < 0, pad, generated)  # -100 where the Trainer padded across batches
        labels = np.where(labels == IGNORE_INDEX, pad, labels)
        translations = [text.strip() for text in target_tokenizer.batch_decode(generated, skip_special_tokens=True)]
        references = [text.strip() for text in target_tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return score_translations(translations, references, n_bootstrap)

    return compute_metrics
