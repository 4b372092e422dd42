"""Clean sequence-level KD targets (nlpkd.target_checks): bounds read off the references, the problems a teacher's
translation can have, and the choice among its hypotheses."""

import datasets
import pytest

from nlpkd.target_checks import TargetChecks, max_ngram_count, overlap, select_targets

EOS = 1


def test_max_ngram_count():
    assert max_ngram_count([5, 6, 7, 5, 6, 7, 5, 6, 7, 1], 3) == 3  # "5 6 7" three times
    assert max_ngram_count([5, 6, 7, 8, 1], 3) == 1
    assert max_ngram_count([5, 6], 3) == 0  # too short for a trigram
    assert max_ngram_count([4, 4, 4, 4], 1) == 4


def test_overlap_is_one_for_equal_sequences_zero_for_disjoint_and_ranks_nearer_higher():
    reference = [5, 6, 7, 8, 9, 1]
    assert overlap(reference, reference) == pytest.approx(1.0)
    assert overlap([20, 21, 22, 1], [5, 6, 7, 8]) == 0.0
    near, far = [5, 6, 7, 8, 10, 1], [5, 10, 7, 11, 9, 1]
    assert overlap(near, reference) > overlap(far, reference) > 0
    assert overlap(near, reference) == pytest.approx(overlap(reference, near))  # F1: symmetric
    assert overlap([], []) == 0.0


def reference_pairs() -> tuple[list[list[int]], list[list[int]]]:
    """100 pairs: target length = source length + k for k in 0..9 (ratios 1.0 .. 2.8), repeating "5 6" at most
    twice (the first ten targets) and otherwise not at all."""
    sources, targets = [], []
    for index in range(100):
        length = 5 + index % 10
        sources.append(list(range(10, 10 + length)))
        body = list(range(100, 100 + length + index % 10 - 1))
        if index < 10:
            body[:4] = [5, 6, 5, 6]
        targets.append([*body, EOS])
    return sources, targets


def test_bounds_follow_the_references():
    sources, targets = reference_pairs()
    ratios = sorted(len(t) / len(s) for s, t in zip(sources, targets, strict=True))
    checks = TargetChecks.from_references(sources, targets, EOS, coverage=1.0, ngram=2)
    assert (checks.min_ratio, checks.max_ratio) == (ratios[0], ratios[-1])
    assert checks.max_repeats == 2  # "5 6" twice is in the references; and never fewer than 2
    middle = TargetChecks.from_references(sources, targets, EOS, coverage=0.8, ngram=2)
    assert ratios[0] < middle.min_ratio <= middle.max_ratio < ratios[-1]
    assert middle.summary() == {
        "length_ratio_bounds": [round(middle.min_ratio, 4), round(middle.max_ratio, 4)],
        "max_ngram_repeats": 2,
        "ngram": 2,
    }
    with pytest.raises(ValueError, match=r"coverage=0: the share of references within the bounds is in \(0, 1\]"):
        TargetChecks.from_references(sources, targets, EOS, coverage=0)
    with pytest.raises(ValueError, match="No reference pair with a source and a target"):
        TargetChecks.from_references([[]], [[5, EOS]], EOS)


def test_problems_of_a_translation():
    checks = TargetChecks(min_ratio=0.5, max_ratio=2.0, max_repeats=2, ngram=3, eos_token_id=EOS)
    source = [10, 11, 12, 13, 14, 15]
    assert checks.problem(source, [20, 21, 22, 23, 24, EOS]) is None
    assert checks.problem(source, [20, 21, 22, 23, 24, 25]) == "unfinished"  # stopped by the length limit
    assert checks.problem(source, []) == "unfinished"
    loop = [20, 21, 22, 20, 21, 22, 20, 21, 22, EOS]  # "20 21 22" three times
    assert checks.problem(source, loop) == "repeated_ngram"
    assert checks.problem(source, [20, 21, 22, 20, 21, 22, EOS]) is None  # twice is allowed
    assert checks.problem(source, [20, EOS]) == "length_ratio"  # 2 / 6 < 0.5
    assert checks.problem(source, list(range(30, 42)) + [EOS]) == "length_ratio"  # 13 / 6 > 2
    several = TargetChecks(min_ratio=0.5, max_ratio=2.0, max_repeats=2, ngram=3, eos_token_id=(EOS, 2))
    assert several.problem(source, [20, 21, 22, 2]) is None  # any of several eos ids ends a translation


def tokenized(references: list[list[int]]) -> datasets.Dataset:
    sources = [[10 + index, 11, 12, 13, 14] for index in range(len(references))]
    masks = [[1] * len(source) for source in sources]
    return datasets.Dataset.from_dict({"input_ids": sources, "attention_mask": masks, "labels": references})


CHECKS = TargetChecks(min_ratio=0.5, max_ratio=2.0, max_repeats=1, ngram=2, eos_token_id=EOS)


def hypotheses_and_references():
    references = [[5, 6, 7, EOS], [8, 9, 10, EOS], [11, 12, 13, EOS]]
    hypotheses = [
        [[5, 6, 20, EOS], [5, 6, 7, EOS], [30, 31, 32, EOS]],  # clean; the second is the reference
        [[8, 9, 8, 9, EOS], [8, 9, 10, 11, EOS], [40, 41, EOS]],  # the best loops ("8 9" twice)
        [[11, 12, 13, 14], [50, EOS], [11, 12, 11, 12, EOS]],  # unfinished, too short, looping: none is clean
    ]
    return tokenized(references), hypotheses


def test_top_selection_keeps_the_best_clean_hypothesis_and_counts_the_problems():
    data, hypotheses = hypotheses_and_references()
    selected, report = select_targets(data, hypotheses, CHECKS, selection="top")
    assert selected["labels"] == [[5, 6, 20, EOS], [8, 9, 10, 11, EOS]]
    assert selected["input_ids"] == data["input_ids"][:2]  # each target stays with its source
    assert selected["attention_mask"] == data["attention_mask"][:2]
    assert report == {
        "sources": 3,
        "hypotheses": 9,
        "targets": 2,
        "references_instead": 0,
        "sources_without_clean_target": 1,
        "best_hypothesis_replaced": 1,  # the second source's loop, by its next hypothesis
        "best_hypothesis_problems": {"unfinished": 1, "repeated_ngram": 1, "length_ratio": 0},
        "all_hypotheses_problems": {"unfinished": 1, "repeated_ngram": 2, "length_ratio": 1},
        "selection": "top",
        "per_source": 1,
        **CHECKS.summary(),
    }


def test_closest_selection_prefers_the_hypothesis_nearest_the_reference():
    data, hypotheses = hypotheses_and_references()
    selected, report = select_targets(data, hypotheses, CHECKS, selection="closest")
    assert selected["labels"] == [[5, 6, 7, EOS], [8, 9, 10, 11, EOS]]
    assert report["best_hypothesis_replaced"] == 2 and report["selection"] == "closest"


def test_n_best_fallback_and_no_checks():
    data, hypotheses = hypotheses_and_references()
    two, report = select_targets(data, hypotheses, CHECKS, per_source=2)
    assert two["labels"] == [[5, 6, 20, EOS], [5, 6, 7, EOS], [8, 9, 10, 11, EOS], [40, 41, EOS]]
    assert two["input_ids"] == [data["input_ids"][0]] * 2 + [data["input_ids"][1]] * 2
    assert report["targets"] == 4
    # Without a clean hypothesis the reference stands in, so the data keep one row per source.
    kept, report = select_targets(data, hypotheses, CHECKS, fallback_to_reference=True)
    assert kept["labels"] == [[5, 6, 20, EOS], [8, 9, 10, 11, EOS], [11, 12, 13, EOS]]
    assert (report["targets"], report["references_instead"], report["sources_without_clean_target"]) == (2, 1, 1)
    # With no checks every hypothesis is a candidate: the beam's best is kept, loops and all.
    unchecked, report = select_targets(data, hypotheses, None)
    assert unchecked["labels"] == [candidates[0] for candidates in hypotheses]
    assert report["checks"] == "off" and sum(report["all_hypotheses_problems"].values()) == 0


def test_select_targets_rejects_bad_settings():
    data, hypotheses = hypotheses_and_references()
    with pytest.raises(ValueError, match=r"selection='best': choose one of top, closest"):
        select_targets(data, hypotheses, CHECKS, selection="best")
    with pytest.raises(ValueError, match="per_source=0: keep at least one target per source"):
        select_targets(data, hypotheses, CHECKS, per_source=0)
    with pytest.raises(ValueError, match="2 lists of hypotheses for 3 sources"):
        select_targets(data, hypotheses[:2], CHECKS)
