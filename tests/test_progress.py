"""Progress lines of the long stages outside the Trainer: the counter and its ETA on a fake clock, silence when
turned off, and a line from each stage (teacher-logits cache, pseudo-targets, Bible, test-set translation,
perplexity) on tiny config-built models."""

import logging
import re

import datasets
import pytest
import torch
from conftest import PadCollator, make_classification_dataset, tiny_marian_config
from test_language_modeling import lm_dataset, masked_lm
from test_teacher_cache import cached_trainer
from test_trainer import make_student, make_teacher
from test_translation import fast_pysword, word_tokenizer  # noqa: F401 (fast_pysword is a fixture)
from transformers import MarianMTModel

import nlpkd.bible as bible
from nlpkd.language_modeling import perplexity
from nlpkd.progress import Progress
from nlpkd.pseudo_targets import teacher_translations
from nlpkd.teacher_cache import load_or_build_teacher_cache
from nlpkd.translation import translate

PAD = 0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def progress_log(caplog):
    """The messages logged by nlpkd.progress."""
    caplog.set_level(logging.INFO, logger="nlpkd.progress")

    def messages() -> list[str]:
        return [record.getMessage() for record in caplog.records if record.name == "nlpkd.progress"]

    return messages


def stage_lines(messages: list[str]) -> list[str]:
    """The messages with their durations as h:mm:ss (a real stage's time varies from run to run)."""
    return [re.sub(r"\d+:\d\d:\d\d", "h:mm:ss", message) for message in messages]


# ---- the counter ----


def test_a_line_every_interval_with_counts_share_elapsed_and_eta(progress_log):
    clock = FakeClock()
    progress = Progress("teacher logits cache", 8454, "rows", interval=30, clock=clock)
    clock.now = 20
    progress.update(1000)  # 20 s since the start: no line yet
    assert progress_log() == []
    clock.now = 41
    progress.update(216)  # 1,216 rows in 41 s: the other 7,238 at that rate take 244 s
    clock.now = 60
    progress.update(1000)  # 19 s since the last line
    assert progress_log() == ["teacher logits cache: 1,216/8,454 rows (14%), 0:00:41 elapsed, ETA 0:04:04"]
    clock.now = 3725
    progress.update(4000)  # 6,216 rows in 3,725 s: the other 2,238 take 1,341 s
    assert progress_log()[-1] == "teacher logits cache: 6,216/8,454 rows (74%), 1:02:05 elapsed, ETA 0:22:21"
    clock.now = 3726
    progress.update(2238)  # the end is logged at once
    assert progress_log()[-1] == "teacher logits cache: 8,454/8,454 rows (100%), done in 1:02:06"
    assert len(progress_log()) == 3


def test_nothing_done_yet_gives_no_eta_and_an_empty_stage_is_done(progress_log):
    clock = FakeClock()
    progress = Progress("stage", 10, "rows", interval=0, clock=clock)
    clock.now = 5
    progress.update(0)
    empty = Progress("empty", 0, "rows", clock=clock)
    empty.update(0)
    assert progress_log() == ["stage: 0/10 rows (0%), 0:00:05 elapsed", "empty: 0/0 rows (100%), done in 0:00:00"]


def test_a_hidden_progress_logs_and_prints_nothing(progress_log, capsys):
    clock = FakeClock()
    progress = Progress("stage", 10, "rows", show=False, interval=0, clock=clock)
    for step in range(10):
        clock.now = 100 * step
        progress.update(1)
    assert progress.done == 10
    assert progress_log() == []
    assert capsys.readouterr() == ("", "")


def test_a_negative_total_is_refused():
    with pytest.raises(ValueError, match="stage: total must be >= 0, got -1"):
        Progress("stage", -1, "rows")


# ---- each long stage logs its progress, and none when told not to ----


@pytest.mark.parametrize("show", [True, False])
def test_building_the_teacher_cache_logs_its_rows(tmp_path, teacher, progress_log, show):
    dataset = make_classification_dataset(num_rows=10)
    load_or_build_teacher_cache(
        str(tmp_path), teacher, dataset, PadCollator(), "sequence", 2, ["labels"], batch_size=4, show_progress=show
    )
    expected = ["teacher logits cache: 10/10 rows (100%), done in h:mm:ss"] if show else []
    assert stage_lines(progress_log()) == expected


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_the_trainer_shows_the_cache_progress_unless_disable_tqdm(tmp_path, progress_log, disable_tqdm):
    dataset = make_classification_dataset(num_rows=12)
    cached_trainer(tmp_path, make_teacher(), make_student(), dataset, disable_tqdm=disable_tqdm)
    expected = [] if disable_tqdm else ["teacher logits cache: 12/12 rows (100%), done in h:mm:ss"]
    assert stage_lines(progress_log()) == expected


def tiny_marian(vocab_size: int) -> MarianMTModel:
    torch.manual_seed(0)
    config = tiny_marian_config(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
    )  # fmt: skip
    return MarianMTModel(config).eval()


@pytest.mark.parametrize("show", [True, False])
def test_pseudo_targets_log_the_source_tokens_translated(tmp_path, progress_log, show):
    sources = [[5 + step] * length + [1] for step, length in enumerate([3, 1, 6, 2, 4])]  # 21 tokens with eos
    data = datasets.Dataset.from_dict(
        {"input_ids": sources, "attention_mask": [[1] * len(row) for row in sources], "labels": sources}
    )
    settings = dict(num_beams=1, max_new_tokens=4, batch_size=2, show_progress=show)
    teacher_translations(tiny_marian(30), data, str(tmp_path), PAD, **settings)
    expected = ["teacher translations: 21/21 source tokens (100%), done in h:mm:ss"] if show else []
    assert stage_lines(progress_log()) == expected


def test_translating_the_test_set_logs_under_its_description(progress_log):
    tokenizer = word_tokenizer()
    sources = ["the cat", "a small house", "the dog"]
    tokens = sum(len(ids) for ids in tokenizer(sources)["input_ids"])
    model = tiny_marian(len(tokenizer))
    translate(model, tokenizer, tokenizer, sources, description="student: translating", num_beams=1, max_new_tokens=3)
    translate(model, tokenizer, tokenizer, sources, show_progress=False, num_beams=1, max_new_tokens=3)
    expected = f"student: translating: {tokens}/{tokens} source tokens (100%), done in h:mm:ss"
    assert stage_lines(progress_log()) == [expected]


def test_perplexity_logs_its_rows(progress_log):
    model, dataset = masked_lm(), lm_dataset(num_rows=10)
    perplexity(model, dataset, batch_size=4, description="teacher: perplexity")
    perplexity(model, dataset, batch_size=4, show_progress=False)
    assert stage_lines(progress_log()) == ["teacher: perplexity: 10/10 rows (100%), done in h:mm:ss"]


@pytest.mark.usefixtures("fast_pysword")
def test_reading_a_bible_logs_its_verses(progress_log):
    path = bible.sword_path()  # no skip: without the modules this names the install command
    verses = bible.read_verses(bible.ENGLISH_MODULE, path, books={"Ruth"})
    assert len(verses) == 85  # Ruth: 22 + 23 + 18 + 22 verses
    assert stage_lines(progress_log()) == [f"reading {bible.ENGLISH_MODULE}: 85/85 verses (100%), done in h:mm:ss"]
    bible.verse_pairs(path, books={"Ruth"}, show_progress=False)
    assert len(progress_log()) == 1
