"""What a trained detector's box head makes of the RoIs it is trained on: has it collapsed to background?

    python experiments/findings/head_probe.py RUN_DIR [RUN_DIR ...] [--batches 10] [--threads 1]

For each training run (its checkpoints/best.ckpt and the data of its .hydra/config.yaml): the RoIs that training
samples on ``--batches`` batches of the train split (the run's sampler, seeded, BatchNorm with its running
statistics, nothing updated: ``loss_path``) go through the box head, and it prints one Markdown row per run
(named ``<runs folder>/<run>``):

- silent units: the share of the box head's output units (its representation, the classifier's input) that are 0
  on every sampled RoI. A head whose last ReLU / ReLU6 is silent everywhere gives the classifier nothing to tell
  foreground from background, and gradient no way back (a unit at 0 passes none);
- fg-bg gap: the distance between the mean representation of the foreground and of the background RoIs;
- p(bg) on fg: the classifier's mean background probability on foreground RoIs, and its foreground accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.model.detector import loss_path
from frcnn_lab.model.roi_head import silent_share
from frcnn_lab.runs.folders import run_data_config

COLUMNS = ("run", "RoIs", "fg RoIs", "silent units", "fg-bg gap", "p(bg) on fg", "fg accuracy")


def head_activity(representation: Tensor, class_logits: Tensor, labels: Tensor) -> dict[str, float]:
    """representation (R, D) of the box head, class logits (R, K) and sampled labels (R,) (0: background) ->
    the figures of one row (see the module docstring). Needs foreground and background RoIs."""
    foreground = labels > 0
    if not foreground.any() or foreground.all():
        raise ValueError("the sampled RoIs need both foreground and background to compare them")
    probabilities = class_logits.softmax(dim=1)
    gap = representation[foreground].mean(dim=0) - representation[~foreground].mean(dim=0)
    return {
        "RoIs": int(labels.numel()),
        "fg RoIs": int(foreground.sum()),
        "silent units": silent_share(representation).item(),
        "fg-bg gap": gap.norm().item(),
        "p(bg) on fg": probabilities[foreground, 0].mean().item(),
        "fg accuracy": (class_logits[foreground].argmax(dim=1) == labels[foreground]).float().mean().item(),
    }


def probe(run_dir: Path, batches: int, seed: int = 0) -> dict[str, float]:
    """The figures of ``run_dir``'s best checkpoint over the RoIs sampled on ``batches`` train batches."""
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    detector = load_module(checkpoint).detector
    datamodule = DetectionDataModule(run_data_config(checkpoint))
    datamodule.setup("fit")
    head = detector.roi_head
    representations, logits, labels = [], [], []
    with loss_path(detector, seed):
        for index, (images, targets) in enumerate(datamodule.loader("train")):
            if index == batches:
                break
            batch = detector.preprocess(images)
            features = detector.trunk(batch.tensors)
            proposals, *_ = detector.rpn(batch, features, targets)
            rois, roi_labels, _ = head.sample(proposals, targets)
            representation = head.tail(head.pooler(features, rois))
            representations.append(representation)
            logits.append(head.classify(representation)[0])
            labels.append(roi_labels)
    return head_activity(torch.cat(representations), torch.cat(logits), torch.cat(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders")
    parser.add_argument("--batches", type=int, default=10, help="train batches to sample RoIs from")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for run_dir in args.runs:
        row = probe(run_dir, args.batches)
        cells = [f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values()]
        print(f"| `{run_dir.parent.name}/{run_dir.name}` | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
