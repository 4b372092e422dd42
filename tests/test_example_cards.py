"""The example cards under model_cards/: each is a recipe's card as written by a full default run, so each must parse
as a Hub model card with nlpkd's metadata, report its student's measured scores, and ship the pictures it shows."""

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"
CARDS = sorted(path.parent.name for path in MODEL_CARDS.glob("*/README.md"))
# pipeline tag and the model-index metric that each recipe's card carries
RECIPES = {
    "text_classification": ("text-classification", "accuracy"),
    "language_modeling": ("fill-mask", "perplexity"),
    "translation": ("translation", "bleu"),
}


def test_the_example_cards_are_those_of_known_recipes():
    assert CARDS, "model_cards/ holds no example card"
    assert set(CARDS) <= set(RECIPES), f"unknown card folders: {set(CARDS) - set(RECIPES)}"


@pytest.mark.parametrize("name", CARDS)
def test_an_example_card_parses_and_reports_its_student(name):
    path = MODEL_CARDS / name / "README.md"
    card = ModelCard.load(path)
    pipeline_tag, metric = RECIPES[name]
    assert card.data.pipeline_tag == pipeline_tag
    assert {"distillation", "nlpkd"} <= set(card.data.tags)
    assert card.data.base_model  # the teacher
    scores = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert metric in scores and isinstance(scores[metric], float)

    # The body's student row shows the same measured score as the metadata (in the column after the model's name
    # and, for translation, its decoding).
    [header] = [line for line in card.text.splitlines() if line.startswith("| model |")]
    [student_row] = [line for line in card.text.splitlines() if line.startswith("| student |")]
    column = 3 if "| model | decoding |" in header else 2
    shown = float(student_row.split("|")[column].split("±")[0])  # the quality column, e.g. "80.2 ± 2.4"
    value = scores[metric] * 100 if metric == "accuracy" else scores[metric]
    assert shown == pytest.approx(value, abs=0.05)
    assert "| baseline |" in card.text and "| teacher |" in card.text

    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert pictures, "the card shows no picture"
    for picture in pictures:
        assert (MODEL_CARDS / name / picture).read_bytes().startswith(b"\x89PNG"), picture
    assert "```bash\npython recipes/" in card.text  # the command that reproduces it


def test_the_index_lists_every_example_card():
    index = (MODEL_CARDS / "README.md").read_text()
    for name in CARDS:
        assert f"({name}/README.md)" in index, f"model_cards/README.md does not link {name}"
