"""Clean sequence-level KD targets: which of the teacher's translations to train on.

A teacher's beam search can loop ("la otra parte de la otra parte de la otra …"), stop at the length limit, or
run far longer or shorter than a translation of its source should; a student trained on such targets learns the
habit. `TargetChecks` flags a translation that did not finish, repeats an n-gram more often than the references
ever do, or has a target/source length ratio outside the references' range — all bounds read off the training
references themselves, so they follow the data rather than a constant. `select_targets` then picks, per source, the
teacher's hypotheses that pass (the best-ranked, or those closest to the reference: Kim & Rush's sequence-level
interpolation), and counts what it dropped and why.
"""

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

PROBLEMS = ("unfinished", "repeated_ngram", "length_ratio")
SELECTIONS = ("top", "closest")


@dataclass(frozen=True)
class TargetChecks:
    """Bounds a clean target (labels, ending with eos) of a source (input ids) stays within: its length ratio
    (target tokens per source token) in [min_ratio, max_ratio], no `ngram`-gram more than `max_repeats` times."""

    min_ratio: float
    max_ratio: float
    max_repeats: int
    ngram: int
    eos_token_id: int | tuple[int, ...]

    @classmethod
    def from_references(
        cls,
        sources: Sequence[Sequence[int]],
        references: Sequence[Sequence[int]],
        eos_token_id: int | Sequence[int],
        coverage: float = 0.99,
        ngram: int = 3,
    ) -> "TargetChecks":
        """Bounds that `coverage` of the reference pairs meet: the length ratio between the references' lower and
        upper (1 − coverage) / 2 quantiles, and at most the `coverage` quantile of their n-gram repeats (at least 2:
        a phrase said twice is ordinary)."""
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage={coverage}: the share of references within the bounds is in (0, 1].")
        pairs = [(source, target) for source, target in zip(sources, references, strict=True) if source and target]
        if not pairs:
            raise ValueError("No reference pair with a source and a target to read the target checks' bounds from.")
        ratios = sorted(len(target) / len(source) for source, target in pairs)
        repeats = sorted(max_ngram_count(target, ngram) for _, target in pairs)
        tail = (1 - coverage) / 2
        eos = tuple(eos_token_id) if isinstance(eos_token_id, Sequence) else eos_token_id
        return cls(
            min_ratio=_quantile(ratios, tail),
            max_ratio=_quantile(ratios, 1 - tail),
            max_repeats=max(2, math.ceil(_quantile(repeats, coverage))),
            ngram=ngram,
            eos_token_id=eos,
        )

    def problem(self, source: Sequence[int], target: Sequence[int]) -> str | None:
        """The first of `PROBLEMS` that `target` has as a translation of `source`, else None."""
        eos = self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)
        if not target or target[-1] not in eos:
            return "unfinished"
        if max_ngram_count(target, self.ngram) > self.max_repeats:
            return "repeated_ngram"
        if not self.min_ratio <= len(target) / max(len(source), 1) <= self.max_ratio:
            return "length_ratio"
        return None

    def summary(self) -> dict:
        return {
            "length_ratio_bounds": [round(self.min_ratio, 4), round(self.max_ratio, 4)],
            "max_ngram_repeats": self.max_repeats,
            "ngram": self.ngram,
        }


def max_ngram_count(tokens: Sequence[int], n: int) -> int:
    """How often the most frequent n-gram of `tokens` occurs (0 when there is none)."""
    counts = Counter(tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1))
    return max(counts.values(), default=0)


def overlap(hypothesis: Sequence[int], reference: Sequence[int], max_n: int = 4) -> float:
    """A sentence-level similarity of two token sequences: the mean over n = 1..max_n of the F1 of their clipped
    n-gram matches (1 for equal sequences, 0 for no shared token)."""
    scores = []
    for n in range(1, max_n + 1):
        found = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        wanted = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        matches = sum((found & wanted).values())
        total = sum(found.values()) + sum(wanted.values())
        scores.append(2 * matches / total if total else 0.0)
    return sum(scores) / max_n


def select_targets(
    dataset: datasets.Dataset,
    hypotheses: Sequence[Sequence[Sequence[int]]],
    checks: TargetChecks | None,
    per_source: int = 1,
    selection: str = "top",
    fallback_to_reference: bool = False,
) -> tuple[datasets.Dataset, dict]:
    """Training rows from the teacher's `hypotheses` of each source of `dataset` (tokenized, its `labels` the
    references), and a report of what was kept.

    Per source, the hypotheses that pass `checks` (all of them when `checks` is None) are ranked — by the teacher
    (`selection="top"`, the beam's order) or by `overlap` with the reference (`"closest"`; ties keep the beam's
    order) — and the first `per_source` become rows with the source's input ids. A source with no clean hypothesis
    gets its reference instead when `fallback_to_reference` (the data keeps its size), else no row."""
    check_selection("selection", selection)
    if per_source < 1:
        raise ValueError(f"per_source={per_source}: keep at least one target per source.")
    if len(hypotheses) != len(dataset):
        raise ValueError(f"{len(hypotheses)} lists of hypotheses for {len(dataset)} sources.")
    top_problems, all_problems = Counter(), Counter()
    rows, replaced, without, references_used = [], 0, 0, 0
    for index, (source, reference, candidates) in enumerate(
        zip(dataset["input_ids"], dataset["labels"], hypotheses, strict=True)
    ):
        problems = [checks.problem(source, target) if checks else None for target in candidates]
        all_problems.update(problem for problem in problems if problem)
        if problems and problems[0]:
            top_problems[problems[0]] += 1
        clean = [target for target, problem in zip(candidates, problems, strict=True) if problem is None]
        if selection == "closest":
            clean = sorted(clean, key=lambda target: -overlap(target, reference))
        chosen = clean[:per_source]
        if not chosen:
            without += 1
            if fallback_to_reference:
                chosen, references_used = [reference], references_used + 1
        elif candidates and chosen[0] != candidates[0]:
            replaced += 1
        rows += [(index, target) for target in chosen]
    selected = dataset.select([index for index, _ in rows])
    selected = selected.remove_columns("labels").add_column("labels", [target for _, target in rows])
    report = {
        "sources": len(dataset),
        "hypotheses": sum(len(candidates) for candidates in hypotheses),
        "targets": len(rows) - references_used,
        "references_instead": references_used,
        "sources_without_clean_target": without,
        "best_hypothesis_replaced": replaced,
        "best_hypothesis_problems": {problem: top_problems[problem] for problem in PROBLEMS},
        "all_hypotheses_problems": {problem: all_problems[problem] for problem in PROBLEMS},
        "selection": selection,
        "per_source": per_source,
        **(checks.summary() if checks else {"checks": "off"}),
    }
    return selected, report


def check_selection(field: str, selection: str) -> None:
    """A clear error naming `field` when `selection` is not one of `SELECTIONS`."""
    if selection not in SELECTIONS:
        raise ValueError(f"{field}={selection!r}: choose one of {', '.join(SELECTIONS)}.")


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `values`, linearly interpolated."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)
