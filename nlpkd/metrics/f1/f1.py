"""F1 score, the harmonic mean of precision and recall (scikit-learn's `f1_score`)."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=(
                "predictions, references: class ids (int); labels, pos_label, average ('binary', 'micro', 'macro', "
                "'weighted' or None for one score a class), sample_weight: as sklearn's."
            ),
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self, predictions, references, labels=None, pos_label=1, average: str | None = "binary", sample_weight=None
    ) -> dict[str, float | list[float]]:
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        return {"f1": score.tolist() if average is None else float(score)}
