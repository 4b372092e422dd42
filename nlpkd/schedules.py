"""Loss-weight schedules: how much of each loss group's weight applies at a point of training.

The terms fall into two groups (`nlpkd.terms`): the prediction layer (`hard_loss`, `logit_loss`) and the layers
(hidden states and attention maps). A schedule multiplies each term's weight by its group's scale, a function of
training progress p = optimizer steps done / all optimizer steps (0 at the start, 1 at the end):

- `constant`: 1 for both groups (every weight as given).
- `linear_decay`: the layer terms fade linearly, 1 − p; the prediction layer stays at 1. The layers guide the start,
  the task decides the end.
- `two_phase`: TinyBERT's two stages in one run: the layer terms alone while p < `split`, then the prediction
  layer alone.

A run with no layer term (or none of the prediction layer) has nothing to hand over, so its terms keep scale 1.

The logit-KD temperature has its own schedule (`temperature_at`): `constant` keeps T, `linear` moves it from the
starting T to `final_temperature` as training goes (annealing KD, Jafari et al. 2021: soft targets first, the
teacher's sharp distribution at the end).
"""

SCHEDULES = ("constant", "linear_decay", "two_phase")
TEMPERATURE_SCHEDULES = ("constant", "linear")
GROUPS = ("prediction", "layers")


def group_scales(schedule: str, progress: float, split: float = 0.5) -> dict[str, float]:
    """The scale of each group's weights at `progress` (clamped to [0, 1]) under `schedule`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"loss_schedule must be one of {SCHEDULES}, got {schedule!r}.")
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear_decay":
        return {"prediction": 1.0, "layers": 1.0 - progress}
    if schedule == "two_phase":
        first = progress < split
        return {"prediction": 0.0 if first else 1.0, "layers": 1.0 if first else 0.0}
    return {"prediction": 1.0, "layers": 1.0}


def temperature_at(schedule: str, start: float, end: float, progress: float) -> float:
    """The logit-KD temperature at `progress` (clamped to [0, 1]): `start` throughout (`constant`), or moved
    linearly from `start` to `end` (`linear`)."""
    if schedule not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"temperature_schedule must be one of {TEMPERATURE_SCHEDULES}, got {schedule!r}.")
    if schedule == "constant":
        return start
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress
