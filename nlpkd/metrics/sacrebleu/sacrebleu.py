"""BLEU and chrF of translations against references, computed by sacrebleu, with bootstrap 95 % intervals."""

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

CITATION = """@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
  year = "2018",
  pages = "186--191",
}"""


class Sacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=CITATION,
            inputs_description=(
                "predictions: translations (str); references: one reference (str) or several (list of str) per "
                "translation; n_bootstrap: resamples for the 95 % intervals (1 = none); tokenize: sacrebleu's "
                "tokenizer ('13a' by default)."
            ),
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, n_bootstrap: int = 1, tokenize: str = "13a") -> dict[str, float]:
        if not predictions:
            raise ValueError("sacrebleu needs at least one prediction.")
        rows = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
        if len({len(row) for row in rows}) != 1:
            raise ValueError("Every prediction needs the same number of references.")
        streams = [list(stream) for stream in zip(*rows, strict=True)]  # sacrebleu: one list per reference set
        results = {}
        for name, metric in (("bleu", BLEU(tokenize=tokenize)), ("chrf", CHRF())):
            score = metric.corpus_score(predictions, streams, n_bootstrap=n_bootstrap)
            results[name] = float(score.score)
            if n_bootstrap > 1:
                results[f"{name}_ci"] = float(score._ci)  # half-width of the 95 % interval
        return results
