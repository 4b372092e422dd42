"""Tiny config-built models and data, as in transformers' own model tests: no downloads, seconds per test."""

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, MarianConfig, Trainer

from nlpkd import report

VOCAB_SIZE = 99


def tiny_bert_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_marian_config(**overrides) -> MarianConfig:
    """A tiny Marian encoder-decoder config (pad 0 also starts the decoder, eos 1), as `tiny_bert_config` for BERT."""
    settings = dict(
        vocab_size=VOCAB_SIZE,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    settings.update(overrides)
    return MarianConfig(**settings)


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def student():
    torch.manual_seed(1)
    return BertForSequenceClassification(tiny_bert_config(hidden_size=16, num_hidden_layers=2, intermediate_size=20))


def make_classification_dataset(num_rows: int = 32, seed: int = 0, max_length: int = 12) -> Dataset:
    """Token ids whose label depends on the first token, with ragged lengths so padding matters."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(num_rows):
        length = int(torch.randint(4, max_length + 1, (1,), generator=generator))
        ids = torch.randint(5, VOCAB_SIZE, (length,), generator=generator).tolist()
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(int(ids[0] % 2))
    return Dataset.from_dict(rows)


@pytest.fixture
def classification_dataset() -> Dataset:
    return make_classification_dataset()


class PadCollator:
    """Right-pads `input_ids` (with 0) and `attention_mask` to the longest row, plus `extra_padding` positions."""

    def __init__(self, extra_padding: int = 0):
        self.extra_padding = extra_padding

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows) + self.extra_padding
        batch = {
            "input_ids": torch.tensor([row["input_ids"] + [0] * (length - len(row["input_ids"])) for row in rows]),
            "attention_mask": torch.tensor(
                [row["attention_mask"] + [0] * (length - len(row["attention_mask"])) for row in rows]
            ),
        }
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([row["labels"] for row in rows])
        return batch


def crash_while_saving_at(step: int, monkeypatch) -> None:
    """Make a Trainer's checkpoint of `step` fail after its weights are written and before its optimizer state and
    trainer_state.json, as a kill -9 mid-save would leave it."""
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def crash(self, output_dir):
        if self.state.global_step == step:
            raise KeyboardInterrupt("killed while saving")
        save_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", crash)


def recipe_progress(caplog) -> tuple[list[str], list[list[str]]]:
    """What a recipe run logged through `nlpkd.progress` (caplog at INFO for it): its speed rounds' lines, and the
    other stages' lines cut to [model, stage]."""
    lines = [record.getMessage() for record in caplog.records if record.name == "nlpkd.progress"]
    speed = [line for line in lines if line.startswith("speed of")]
    return speed, [line.split(": ")[:2] for line in lines if not line.startswith("speed of")]


def speed_rounds_done(line: str, models: str = "teacher, student") -> bool:
    """Whether `line` is the last progress line of the recipes' speed rounds, `models` timed in turns."""
    rounds = f"{report.SPEED_ROUNDS}/{report.SPEED_ROUNDS} rounds"
    return line.startswith(f"speed of {models} in turns: {rounds} (100%), done in ")
