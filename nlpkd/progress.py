"""Progress of the long stages that run outside the Trainer's loop (which has its own bar): building the teacher-logits
cache, the teacher's pseudo-target translations, reading the Bibles, translating and scoring the test set.

A stage logs one INFO line every `INTERVAL` seconds, and one when it is done:

    teacher logits cache: 1,216/8,454 rows (14%), 0:00:41 elapsed, ETA 0:04:04

Log lines rather than a redrawn bar, because the recipes run for hours with their output kept in a log file. Callers
pass `show_progress=not args.disable_tqdm and args.should_log` from their TrainingArguments: quiet under
`disable_tqdm`, as the Trainer's own bar is, and on every process but the one that logs.
"""

import datetime
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Seconds between two lines: often enough to show that a stage is alive, rarely enough to keep a log readable.
INTERVAL = 30.0


class Progress:
    """Counts the work of one stage (`update(amount)` as it is done) out of `total` `unit`s and logs a line with the
    share done, the time elapsed and the time left, at most every `interval` seconds and once when `total` is
    reached; nothing when `show` is False.

    The time left assumes the rest goes at the rate so far, so count the work in a unit whose cost is even (the
    source tokens of a translation sorted by length, not its sentences, whose later ones are the longest).
    """

    def __init__(
        self,
        description: str,
        total: int,
        unit: str,
        show: bool = True,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0:
            raise ValueError(f"{description}: total must be >= 0, got {total}.")
        self.description, self.total, self.unit = description, total, unit
        self.show, self.interval, self.clock = show, interval, clock
        self.done = 0
        self.start = self.last_line = clock()

    def update(self, amount: int) -> None:
        """Count `amount` more units done; log a line when `interval` has passed since the last one, or at the end."""
        self.done += amount
        if not self.show:
            return
        now = self.clock()
        if self.done >= self.total or now - self.last_line >= self.interval:
            self.last_line = now
            logger.info(self.line(now))

    def line(self, now: float) -> str:
        """The progress line at time `now` (of `clock`)."""
        elapsed = now - self.start
        share = self.done / self.total if self.total else 1.0
        text = f"{self.description}: {self.done:,}/{self.total:,} {self.unit} ({share:.0%}), "
        if self.done >= self.total:
            return text + f"done in {_duration(elapsed)}"
        text += f"{_duration(elapsed)} elapsed"
        if self.done > 0:
            text += f", ETA {_duration(elapsed / self.done * (self.total - self.done))}"
        return text


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))  # h:mm:ss
