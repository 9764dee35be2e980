"""Failed runs: which runs never left the floor, how often each configuration fails, and what went wrong.

A run has **failed** when its best val mAP@0.5 stays below the floor (``convergence.FLOOR``) over more than
``window`` validations: it did not learn the task in its budget, whether its curve is flat there or still
creeping up (on the hard benchmark, 4 RoIs per image: 0.012 -> 0.021 over 20 epochs, where the default reaches
0.72). A run that reached the floor has learned, however few its validations; one still below it after
``window`` validations or fewer has no outcome yet and is not counted.

- **Failure rate** per configuration: failures / runs with an outcome, with the exact (Clopper-Pearson) 95 %
  interval of ``scipy.stats.binomtest``; three runs give wide intervals (0/3: [0, 0.71]).
- **Against the reference** configuration: Fisher's exact test of the 2 x 2 table (failed / learned x
  configuration / reference), two-sided, Holm-adjusted over the configurations compared with the reference.
- **Diagnosis** of a failed run from its logged training diagnostics (``diag/*``, per epoch), stage by stage
  along the detector: does the RPN find the objects (``rpn_recall``), are foreground RoIs sampled
  (``roi_fg`` per image), does the box head classify them (``cls_accuracy_fg``). The first stage that fails is
  named with the epoch where it went wrong; a head that collapsed is said to be silent when most of its output
  units are 0 on every RoI of a batch (``head_silent``, where logged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats
from statsmodels.stats.multitest import multipletests

from frcnn_lab.report.statistics import LEVEL

RPN_RECALL = 0.5         # the RPN learns when it covers half the GT boxes with a proposal at IoU >= 0.5
FG_PER_IMAGE = 0.5       # fewer foreground RoIs per image than this: the head has almost nothing to learn from
FG_ACCURACY = 0.10       # a head whose foreground accuracy ends at or below this has collapsed to background
BACKGROUND_MATCH = 0.02  # overall accuracy this close to the background share: every RoI called background
DETECTIONS = 0.5         # fewer val detections per image than this: the scores stay below the threshold
SILENT = 0.5             # a head with more of its units 0 on every RoI of a batch than this is silent


def failed(curve: Sequence[float], window: int, floor: float) -> bool | None:
    """Whether a run never left the floor; None without an outcome yet (below the floor with ``window``
    validations or fewer)."""
    if curve and max(curve) >= floor:
        return False
    return None if len(curve) <= window else True


@dataclass(frozen=True)
class FailureRate:
    failures: int
    runs: int                          # runs with an outcome
    interval: tuple[float, float]      # Clopper-Pearson, LEVEL
    raw_p: float | None = None         # Fisher's exact test against the reference; None for the reference
    p: float | None = None             # Holm-adjusted over the configurations compared with the reference

    @property
    def rate(self) -> float:
        return self.failures / self.runs


def failure_rate(outcomes: Sequence[bool]) -> FailureRate:
    """``outcomes``: True per failed run -> the count with its exact interval."""
    k, n = sum(outcomes), len(outcomes)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=LEVEL, method="exact")
    return FailureRate(k, n, (float(ci.low), float(ci.high)))


def failure_rates(outcomes: Mapping[str, Sequence[bool]], reference: str | None) -> dict[str, FailureRate]:
    """Configuration -> outcomes (True: failed) -> its rate, and, beside the ``reference``, Fisher's p against it."""
    rates = {label: failure_rate(found) for label, found in outcomes.items() if found}
    if reference not in rates:
        return rates
    ref = rates[reference]
    others = [label for label in rates if label != reference]
    raw = {label: float(stats.fisher_exact([[rates[label].failures, rates[label].runs - rates[label].failures],
                                            [ref.failures, ref.runs - ref.failures]]).pvalue)
           for label in others}
    if others:
        holm = multipletests([raw[label] for label in others], alpha=1 - LEVEL, method="holm")[1]
        for label, p in zip(others, holm, strict=True):
            rates[label] = FailureRate(rates[label].failures, rates[label].runs, rates[label].interval, raw[label],
                                       float(p))
    return rates


@dataclass(frozen=True)
class Diagnosis:
    stage: str                         # "rpn" | "sampling" | "head" | "validation" | "unknown"
    epoch: int | None                  # 1-based epoch where it went wrong
    text: str


def column(epochs: Mapping[int, Mapping[str, float]], name: str) -> list[tuple[int, float]]:
    """(1-based epoch, value) of a metric logged per epoch: Lightning's ``<name>_epoch``, else ``<name>``."""
    for key in (f"{name}_epoch", name):
        points = [(e + 1, row[key]) for e, row in sorted(epochs.items()) if key in row]
        if points:
            return points
    return []


def stays_low(points: list[tuple[int, float]], threshold: float) -> int | None:
    """The first epoch from which every value stays at or below ``threshold``; None when the last is above it."""
    start = None
    for epoch, value in points:
        start = (start or epoch) if value <= threshold else None
    return start


def diagnose(epochs: Mapping[int, Mapping[str, float]]) -> Diagnosis:
    """What a failed run's diagnostics show, stage by stage, from its per-epoch metrics (0-based epoch -> column
    -> value, as ``runs.read_metrics`` returns them)."""
    recall, fg, bg = column(epochs, "diag/rpn_recall"), column(epochs, "diag/roi_fg"), column(epochs, "diag/roi_bg")
    accuracy_fg, accuracy = column(epochs, "diag/cls_accuracy_fg"), column(epochs, "diag/cls_accuracy")
    if not (recall or fg or accuracy_fg):
        return Diagnosis("unknown", None, "no diagnostics logged (no diag/* columns in metrics.csv)")
    found = []
    skipped = column(epochs, "train/nonfinite_batches")
    if skipped and skipped[-1][1] > 0:  # a running count
        first = next(e for e, v in skipped if v > 0)
        found.append(f"{skipped[-1][1]:.0f} batches with a non-finite loss or gradient skipped, the first in epoch "
                     f"{first}")
    if recall:
        if max(v for _, v in recall) < RPN_RECALL:
            best_epoch, best = max(recall, key=lambda point: point[1])
            found.append(f"RPN recall stays below {RPN_RECALL:.2f} (best {best:.2f} at epoch {best_epoch})")
            return Diagnosis("rpn", recall[0][0], "; ".join(found) + ": the RPN does not find the objects")
        reached = next(point for point in recall if point[1] >= RPN_RECALL)
        found.append(f"RPN learns (recall {reached[1]:.2f} at epoch {reached[0]}, {recall[-1][1]:.2f} at epoch "
                     f"{recall[-1][0]})")
    if fg:
        last_epoch, last = fg[-1]
        share = dict(bg).get(last_epoch)
        share_text = "" if share is None else f", {100 * last / (last + share):.0f} % of the sampled RoIs"
        if last < FG_PER_IMAGE:
            since = stays_low(fg, FG_PER_IMAGE)
            found.append(f"foreground RoIs per image below {FG_PER_IMAGE} from epoch {since} ({last:.2f} at epoch "
                         f"{last_epoch}{share_text})")
            return Diagnosis("sampling", since, "; ".join(found) + ": the head gets almost no foreground to learn")
        found.append(f"foreground RoIs sampled ({last:.1f} per image{share_text})")
    if accuracy_fg:
        return head_diagnosis(found, accuracy_fg, accuracy, fg, bg, epochs)
    return Diagnosis("unknown", None, "; ".join(found) + ": no head accuracy logged (diag/cls_accuracy_fg)")


def head_diagnosis(found: list[str], accuracy_fg: list[tuple[int, float]], accuracy: list[tuple[int, float]],
                   fg: list[tuple[int, float]], bg: list[tuple[int, float]],
                   epochs: Mapping[int, Mapping[str, float]]) -> Diagnosis:
    last_epoch, last = accuracy_fg[-1]
    if last > FG_ACCURACY:
        found.append(f"the head's foreground accuracy {last:.2f} at epoch {last_epoch}")
        detections = column(epochs, "val/detections_per_image")
        if detections and detections[-1][1] < DETECTIONS:
            since = stays_low(detections, DETECTIONS)
            return Diagnosis("validation", since, "; ".join(found) + f", but validation keeps almost no detections "
                             f"({detections[-1][1]:.2f} per image at epoch {detections[-1][0]}, below "
                             f"{DETECTIONS} from epoch {since}): the scores stay below the score threshold")
        return Diagnosis("unknown", None, "; ".join(found) + ": training looks healthy; the logged metrics do not "
                         "say why val mAP@0.5 stays at the floor")
    peak_epoch, peak = max(accuracy_fg, key=lambda point: point[1])
    since = stays_low(accuracy_fg, FG_ACCURACY)
    if peak <= FG_ACCURACY:
        found.append(f"the head's foreground accuracy never exceeds {FG_ACCURACY:.2f} (best {peak:.2f} at epoch "
                     f"{peak_epoch})")
        went_wrong, verdict = accuracy_fg[0][0], "the head never learns the foreground"
    else:
        went_wrong, value = next((e, v) for e, v in accuracy_fg if e > peak_epoch and v <= FG_ACCURACY)
        stays = "" if since == went_wrong else f" from epoch {since}"
        found.append(f"the head's foreground accuracy falls from {peak:.2f} (epoch {peak_epoch}) to {value:.2f} at "
                     f"epoch {went_wrong} and stays at or below {FG_ACCURACY:.2f}{stays} ({last:.2f} at epoch "
                     f"{last_epoch})")
        verdict = "the head collapses to background"
    silent = column(epochs, "diag/head_silent")
    if silent and silent[-1][1] > SILENT:
        since = stays_low([(e, -v) for e, v in silent], -SILENT)
        found.append(f"the box head silent: {silent[-1][1]:.0%} of its units 0 on every RoI of a batch at epoch "
                     f"{silent[-1][0]}, at least {SILENT:.0%} from epoch {since}")
    overall = dict(accuracy).get(last_epoch)
    fg_last, bg_last = dict(fg).get(last_epoch), dict(bg).get(last_epoch)
    if None not in (overall, fg_last, bg_last) and fg_last + bg_last > 0:
        share = bg_last / (fg_last + bg_last)
        if abs(overall - share) <= BACKGROUND_MATCH:
            found.append(f"overall accuracy {overall:.2f}, the background share of the sampled RoIs ({share:.2f})")
            verdict += " (it calls every RoI background)"
    return Diagnosis("head", went_wrong, "; ".join(found) + f": {verdict}")
