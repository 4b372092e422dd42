"""Search the distillation settings with `Trainer.hyperparameter_search` (optuna): the temperature T, the balance α
between the labels and the teacher's logits (hard_label_weight = 1 − α, logit_weight = α) and, optionally, the
weights of the hidden-state and attention losses. Each trial distils a fresh student (same initialisation) with the
recipe's schedule and is scored on the validation split."""

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from .arguments import DistillationArguments

logger = logging.getLogger(__name__)

TEMPERATURE_RANGE = (1.0, 8.0)  # searched on a log scale
ALPHA_RANGE = (0.0, 1.0)
LAYER_WEIGHT_CHOICES = (0.0, 0.1, 1.0)  # 0 switches that loss off


@dataclass
class SearchArguments:
    r"""
    Parameters:
        search_trials (`int`, *optional*):
            Before distilling, try this many settings (each a full distillation scored on the validation split) and
            distil the final student with the best. Off by default.
        search_layer_weights (`bool`, *optional*, defaults to `False`):
            Also search `hidden_weight` and `attention_weight` among `LAYER_WEIGHT_CHOICES` (0 switches a loss off).
        search_metric (`str`, *optional*, defaults to `"eval_loss"`):
            The evaluation metric a trial is scored by; a name ending in "loss" is minimised, any other maximised.
    """

    search_trials: int | None = field(
        default=None,
        metadata={
            "help": "Search temperature and the hard/logit balance (optuna) with this many trials, each a full "
            "distillation scored on the validation split, then distil with the best. Needs `pip install optuna`."
        },
    )
    search_layer_weights: bool = field(
        default=False,
        metadata={"help": f"Also search hidden_weight and attention_weight among {LAYER_WEIGHT_CHOICES} (0 = off)."},
    )
    search_metric: str = field(
        default="eval_loss",
        metadata={"help": "Evaluation metric that scores a trial; names ending in 'loss' are minimised."},
    )

    def __post_init__(self):
        if self.search_trials is None:
            if self.search_layer_weights:
                raise ValueError("search_layer_weights=True needs search_trials: pass --search_trials N (N >= 1).")
            return
        if self.search_trials < 1:
            raise ValueError(
                f"search_trials must be >= 1 (the number of settings to try), got {self.search_trials}; pass "
                "--search_trials 1 or more, or leave it out to distil with the given settings."
            )
        try:
            import optuna  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"search_trials={self.search_trials} runs the search with optuna, which is not installed: "
                "pip install optuna (or pip install 'nlpkd[search]')."
            ) from error

    @property
    def direction(self) -> str:
        # As transformers' `greater_is_better` for `metric_for_best_model`.
        return "minimize" if self.search_metric.endswith("loss") else "maximize"


def suggest_settings(trial, layer_weights: bool = False) -> dict[str, float]:
    """The `DistillationArguments` fields one optuna trial sets (an `optuna.trial.FixedTrial` of a finished trial's
    params gives that trial's settings back)."""
    alpha = trial.suggest_float("alpha", *ALPHA_RANGE)
    settings = {
        "temperature": trial.suggest_float("temperature", *TEMPERATURE_RANGE, log=True),
        "hard_label_weight": 1.0 - alpha,
        "logit_weight": alpha,
    }
    if layer_weights:
        for name in ("hidden_weight", "attention_weight"):
            settings[name] = trial.suggest_categorical(name, LAYER_WEIGHT_CHOICES)
    return settings


def search_distillation(
    student_init: Callable[[], PreTrainedModel],
    teacher: PreTrainedModel,
    args: DistillationArguments,
    search_args: SearchArguments,
    trainer_class: type | None = None,
    **trainer_kwargs,
) -> dict:
    """Run `search_args.search_trials` trials of `trainer_class` (default `DistillationTrainer`) and return what
    results.json keeps under "search": the metric, the best trial's settings and score, and every trial.

    `student_init()` makes a fresh student; the Trainer seeds it with `args.seed` before each trial. `trainer_kwargs`
    go to the trainer (train_dataset, eval_dataset with its labels, compute_metrics, ...). Trials run under
    output_dir/search and save no checkpoints; `args` itself is left as it was.
    """
    import optuna
    from optuna.trial import FixedTrial

    from .trainer import DistillationTrainer

    trial_args = dataclasses.replace(
        args,
        output_dir=os.path.join(args.output_dir, "search"),
        save_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
    )
    trainer = (trainer_class or DistillationTrainer)(
        model_init=student_init, teacher_model=teacher, args=trial_args, **trainer_kwargs
    )
    studies = []

    def hp_space(trial) -> dict[str, float]:
        studies.append(trial.study)
        return suggest_settings(trial, search_args.search_layer_weights)

    def objective(metrics: dict[str, float]) -> float:
        if search_args.search_metric not in metrics:
            raise ValueError(
                f"search_metric={search_args.search_metric!r} is not among the evaluation metrics {sorted(metrics)}; "
                "pass one of them."
            )
        return metrics[search_args.search_metric]

    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=objective,
        n_trials=search_args.search_trials,
        direction=search_args.direction,
        backend="optuna",
        hp_name=lambda trial: f"run-{trial.number}",  # also each trial's TensorBoard folder name
        sampler=optuna.samplers.TPESampler(seed=args.seed),
    )
    layer_weights = search_args.search_layer_weights
    trials = [
        {
            "trial": trial.number,
            "state": trial.state.name,
            "score": trial.value,
            **suggest_settings(FixedTrial(trial.params), layer_weights),
        }
        for trial in studies[-1].trials
    ]
    summary = {
        "metric": search_args.search_metric,
        "direction": search_args.direction,
        "best_trial": int(best.run_id),
        "best_score": best.objective,
        "best_settings": suggest_settings(FixedTrial(best.hyperparameters), layer_weights),
        "trials": trials,
    }
    logger.info(
        "Search: trial %d of %d is best, %s = %s with %s",
        summary["best_trial"],
        len(trials),
        summary["metric"],
        summary["best_score"],
        summary["best_settings"],
    )
    return summary
