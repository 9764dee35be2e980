"""Train loader throughput at 600 px next to the detector's train step, measured in the same run.

    python experiments/bench/loader.py --workers 2 --backbone vgg16 --device cpu
    python experiments/bench/loader.py --workers 8 --backbone vgg16 --device cuda

Writes ``--images`` JPEG photos of 1024 x 768 (the typical Open Images size) drawn from the synthetic
scenes into a temporary CSV dataset, then measures

- the train loader (``data=csv``, ``data.image_size=600``, ``max_size=1000``, the thesis's flips and
  rot90, aspect-ratio grouping, ``--workers`` processes): images per second over ``--epochs`` passes
  after one warm-up pass;
- the train step (forward + backward + SGD step of the ``--backbone`` detector, default config groups)
  on batches from the same loader: the median seconds per image over ``--steps`` after 2 warm-up steps.

The loader keeps up when its images/s are several times the train step's. Prints both and their
ratio, and adds the record to ``--output`` (a JSON list; earlier records are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from frcnn_lab.config import group_option
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.synthetic import CLASSES, SyntheticScenes
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.losses import weighted_total


def config_group(group: str, name: str = "default") -> dict:
    return group_option(group, name)


def write_photos(root: Path, count: int) -> Path:
    """``count`` 1024 x 768 JPEGs (landscape and portrait) and their thesis-format CSV; returns the CSV."""
    scenes = SyntheticScenes(count, seed=0, image_sizes=((768, 1024), (1024, 768)), object_size=(120, 400))
    lines = []
    for i in range(count):
        item = scenes[i]
        Image.fromarray(item["image"]).save(root / f"{i}.jpg", quality=90)
        lines += [f"{i}.jpg,{b[0]:.0f},{b[1]:.0f},{b[2]:.0f},{b[3]:.0f},{CLASSES[label - 1]}"
                  for b, label in zip(item["boxes"], item["labels"], strict=True)] or [f"{i}.jpg,,,,,bg"]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def loader_images_per_s(datamodule: DetectionDataModule, epochs: int) -> float:
    loader = datamodule.train_dataloader()
    for _ in loader:  # warm-up: worker start, page cache
        pass
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch_images, _ in loader:
            images += len(batch_images)
    return images / (time.perf_counter() - start)


def train_step_s_per_image(datamodule: DetectionDataModule, backbone: str, device: str, steps: int) -> float:
    backbone_cfg = {**config_group("backbone", backbone), "weights": "none"}
    loss_cfg = config_group("loss")
    detector = build_detector(backbone_cfg, config_group("rpn"), config_group("roi_head"), loss_cfg,
                              len(CLASSES), "full").to(device).train()
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    batches = iter(datamodule.train_dataloader())
    for step in range(steps + 2):
        images, targets = next(batches)
        images = [image.to(device) for image in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = weighted_total(detector(images, targets).losses, loss_cfg["weights"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= 2:
            times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=int(config_group("data", "csv")["num_workers"]))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone", default="vgg16", choices=["vgg16", "resnet50", "mobilenet_v2"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("loader_results.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        csv_path = write_photos(Path(folder), args.images)
        data = config_group("data", "csv")
        data.update(classes=list(CLASSES), source={"train": str(csv_path)}, split_fractions=[1.0, 0.0, 0.0],
                    image_size=600, max_size=1000, batch_size=args.batch_size, num_workers=args.workers,
                    augment={"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "extra": []})
        datamodule = DetectionDataModule(data)
        datamodule.setup()
        loader_rate = loader_images_per_s(datamodule, args.epochs)
        step = train_step_s_per_image(datamodule, args.backbone, args.device, args.steps)
    record = {
        "loader_images_per_s": round(loader_rate, 2), "train_step_s_per_image": round(step, 4),
        "train_images_per_s": round(1 / step, 2), "loader_over_train_ratio": round(loader_rate * step, 2),
        "workers": args.workers, "batch_size": args.batch_size, "image_size": 600, "max_size": 1000,
        "photo_size": "1024x768 JPEG", "backbone": args.backbone, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        or platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    print(f"train loader: {record['loader_images_per_s']} images/s with {args.workers} workers at 600 px")
    print(f"train step:   {record['train_step_s_per_image']} s/image ({record['train_images_per_s']} images/s, "
          f"{args.backbone} on {args.device})")
    print(f"ratio loader / train step: {record['loader_over_train_ratio']}x")
    records = json.loads(args.output.read_text()) if args.output.is_file() else []
    args.output.write_text(json.dumps([*records, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
