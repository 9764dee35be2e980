"""Has a run stopped learning? A verdict from its validation curve (val mAP@0.5 per validation).

The criterion: the best of the last ``window`` validations exceeds the best of all validations before
them by more than the tolerance -> **still learning**; by the tolerance or less, with at least
``window + 1`` validations -> **plateaued**; fewer validations and no such rise -> **too short to
judge** (which counts as not plateaued). A run with fewer than ``window + 1`` validations whose last
ones still rise past the tolerance is called still learning from the validations it has: a rise needs
no long window to be seen, a plateau does. A curve of at least ``window + 1`` validations that does not rise but
whose best stays below the ``floor`` is **flat at the floor**, which counts as not plateaued either: it has not
learned the task yet. A curve of at least ``window + 1`` validations whose last ``window`` all stay below its best
by more than twice the tolerance is **past its peak**: it rose, then fell (too few training images for the steps,
as a detector trained on a dozen tiles memorises them, or a learning rate too high for the end of the schedule).
It counts as settled, like a plateau: more steps would not raise its best, which ``best.ckpt`` holds. Twice the
tolerance, because the best of many noisy validations is a lucky one that the last few fall short of by up to
about one tolerance on a flat curve.

Defaults, and why:

- ``window`` = 3 validations: a plateau must hold over more than one noisy point, and three is the
  shortest window in which one lucky validation does not decide (the best of three must still be no
  better than what came before). With one validation per epoch it asks for the last three epochs.
- ``tolerance`` = 0.02 mAP@0.5 at p = 0.5, scaled by 2 sqrt(p (1 - p)) at the run's best mAP@0.5 p: the
  noise of mAP@0.5 on a validation set of the size the lab uses. An AP estimated on n ground-truth boxes
  is roughly a proportion, with standard error sqrt(p (1 - p) / n): 0.024 at p = 0.5 for the 421 boxes
  of the hard benchmark's 100 val scenes, 0.03-0.04 for a few hundred. A gain below that could vanish by
  drawing another validation set, so it is no evidence of learning; a gain above it is. The noise shrinks
  near 0 and 1, and so does the tolerance: 0.018 at p = 0.72, 0.0057 at p = 0.02, where a rise from
  0.012 to 0.021 is most of the run's accuracy, not noise. The verdict compares maxima, so a flat curve
  whose validations scatter with a standard deviation of half the tolerance is called still learning
  rarely (under 5 % of simulated flat curves of ten validations; ``tests/test_report_simulation.py``).

- ``floor`` = 0.05 mAP@0.5: below it a detector has not learned the task, and a flat curve there is where an
  untrained head sits, not an accuracy it converged to; it says nothing about where the setting would end
  with more steps. On the hard benchmark, 4 RoIs per image stays at 0.008-0.028 for 20 epochs and one seed
  of 16 RoIs at or below 0.004 for 14 epochs before it starts to rise, where the default reaches 0.72.

All three are ``report`` options (``--plateau-window``, ``--plateau-tolerance``, ``--plateau-floor``): a larger
validation set allows a smaller tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 3
TOLERANCE = 0.02
FLOOR = 0.05
PLATEAUED, STILL_LEARNING, TOO_SHORT = "plateaued", "still learning", "too short to judge"
AT_FLOOR, PAST_PEAK = "flat at the floor", "past its peak"


@dataclass(frozen=True)
class Convergence:
    verdict: str                      # PLATEAUED | PAST_PEAK | STILL_LEARNING | TOO_SHORT | AT_FLOOR
    gain: float | None                # best of the last window minus best before it; None with < 2 validations
    validations: int
    tolerance: float | None = None    # the tolerance at this run's best mAP@0.5

    @property
    def settled(self) -> bool:
        """Plateaued or past its peak: more steps would not raise the run's best."""
        return self.verdict in (PLATEAUED, PAST_PEAK)


def tolerance_at(best: float, tolerance: float = TOLERANCE) -> float:
    """``tolerance`` (the one at mAP 0.5) scaled to the noise of a proportion at ``best``: 2 sqrt(p (1 - p))."""
    p = min(max(best, 0.0), 1.0)
    return tolerance * 2 * math.sqrt(p * (1 - p))


def judge(curve: Sequence[float], window: int = WINDOW, tolerance: float = TOLERANCE,
          floor: float = FLOOR) -> Convergence:
    """``curve``: val mAP@0.5 per validation, in order; ``tolerance``: the one at mAP 0.5."""
    if window < 1 or tolerance < 0 or floor < 0:
        raise ValueError(f"plateau window must be >= 1, tolerance and floor >= 0, got {window}, {tolerance} "
                         f"and {floor}")
    n = len(curve)
    if n < 2:
        return Convergence(TOO_SHORT, None, n)
    last = min(window, n - 1)
    gain = max(curve[-last:]) - max(curve[:-last])
    scaled = tolerance_at(max(curve), tolerance)
    if gain > scaled:
        return Convergence(STILL_LEARNING, gain, n, scaled)
    if n <= window:
        return Convergence(TOO_SHORT, gain, n, scaled)
    if max(curve) < floor:
        return Convergence(AT_FLOOR, gain, n, scaled)
    return Convergence(PAST_PEAK if gain < -2 * scaled else PLATEAUED, gain, n, scaled)


def summary(verdicts: Sequence[Convergence]) -> str:
    """"2/3 plateaued (1 still learning)" for a configuration's runs."""
    text = f"{sum(v.verdict == PLATEAUED for v in verdicts)}/{len(verdicts)} plateaued"
    others = [f"{n} {verdict}" for verdict in (PAST_PEAK, STILL_LEARNING, AT_FLOOR, TOO_SHORT)
              if (n := sum(v.verdict == verdict for v in verdicts))]
    return text + (f" ({', '.join(others)})" if others else "")
