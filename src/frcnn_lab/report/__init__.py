"""Results table, statistics and plots of a run or a sweep, from the local files alone (no W&B account needed).

``python -m frcnn_lab.report <run or multirun dir> [--output DIR] [--overwrite]`` reads each training run's
``.hydra/config.yaml``, ``csv/metrics.csv``, ``status.json`` and, when ``frcnn_lab.evaluate`` was run on
it, the latest ``evaluate/*/evaluation.json`` (``runs``). Runs are grouped into configurations by the config
keys that differ between them (the seed aside). It writes ``report.md``: one row per configuration (runs,
best epochs, mAP@0.5 mean ± std over seeds, mAP@[.5:.95], false-negative and false-positive shares, ms per
image, training time, convergence); whether each run's validation curve has plateaued (``convergence``);
failed runs counted per configuration and each one diagnosed from its logged diagnostics (``failures``);
with ``--budget cost``, the runs read at equal training cost (``budget``); "which choice mattered"
(``statistics``): main effects and interactions of the factorial designs in the study, one-key pairs,
multiplicity-adjusted intervals, standardised effects, detectable differences and a ranking only where it
holds, then the same comparisons without a normal model (``nonparametric``: probability of improvement,
sign-flip p, ROPE verdicts), over the validation images where runs saved their detections
(``validation_set``) and on the runs that learned; accuracy against inference and training cost with the
Pareto front; one row per run; TIDE errors where runs have them (``tables``, ``sections``). PNG plots
(``plots``): per configuration the thesis's figures 12-17, mAP@0.5 per epoch, ablation bars, the comparisons
with their intervals, the Pareto view.
Comparisons that involve runs which have not plateaued say, in the report, on the console and on the
plots, that they rank learning speed in the budget, not final accuracy.
"""

from frcnn_lab.report.cli import main
from frcnn_lab.report.runs import find_runs, group_runs
from frcnn_lab.report.writer import write_report

__all__ = ["find_runs", "group_runs", "main", "write_report"]
