import os
import subprocess
import sys

import pytest

from nlpkd.metrics import available_metrics, load_metric

# Fixed data; the expected values were worked out by hand from the confusion counts.
REFERENCES = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTIONS = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_shipped_metrics_are_listed():
    assert {"accuracy", "f1"} <= set(available_metrics())


def test_accuracy():
    accuracy = load_metric("accuracy")
    assert accuracy.compute(predictions=PREDICTIONS, references=REFERENCES) == {"accuracy": pytest.approx(0.6)}
    assert accuracy.compute(predictions=PREDICTIONS, references=REFERENCES, normalize=False) == {"accuracy": 6.0}


def test_accuracy_accumulates_batches():
    accuracy = load_metric("accuracy")
    accuracy.add_batch(predictions=PREDICTIONS[:4], references=REFERENCES[:4])
    accuracy.add_batch(predictions=PREDICTIONS[4:], references=REFERENCES[4:])
    assert accuracy.compute() == {"accuracy": pytest.approx(0.6)}


def test_f1_averages():
    f1 = load_metric("f1")
    # class 0: tp 2, fp 1, fn 2 -> 4/7; class 1: tp 2, fp 2, fn 1 -> 4/7; class 2: tp 2, fp 1, fn 1 -> 2/3
    per_class = f1.compute(predictions=PREDICTIONS, references=REFERENCES, average=None)["f1"]
    assert per_class == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    macro = f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="macro")["f1"]
    assert macro == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    weighted = f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="weighted")["f1"]
    assert weighted == pytest.approx((4 * 4 / 7 + 3 * 4 / 7 + 3 * 2 / 3) / 10)


def test_f1_binary_scores_the_positive_class():
    f1 = load_metric("f1")
    references, predictions = [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]  # tp 2, fp 1, fn 1
    assert f1.compute(predictions=predictions, references=references) == {"f1": pytest.approx(2 / 3)}
    assert f1.compute(predictions=predictions, references=references, pos_label=0)["f1"] == pytest.approx(0.5)


def test_unknown_metric_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"Unknown metric 'bleurt': nlpkd ships .*accuracy, f1"):
        load_metric("bleurt")


def test_metrics_load_with_the_hub_offline():
    code = (
        "from nlpkd.metrics import load_metric; "
        "print(load_metric('f1').compute(predictions=[0, 1, 1], references=[0, 1, 0], average='macro')['f1'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(2 / 3)
