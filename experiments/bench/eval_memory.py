"""Peak memory of validation as the number of images grows: 250 vs 1,000 synthetic images.

Each size runs in a fresh process (``ru_maxrss`` only ever grows), which builds the default detector
(random weights), then validates ``N`` small synthetic images on the CPU and reports its resident set size
before validation and its peak. Bounded memory means the peak grows far slower than the image count:
only the metric states (boxes, scores, labels per image) accumulate.

    .venv/bin/python experiments/bench/eval_memory.py            # prints the figures, writes eval_memory.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

SIZES = (250, 1000)
IMAGE_SIZE = 96
OUTPUT = Path(__file__).with_suffix(".json")


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(num_images: int) -> dict[str, float]:
    """Validate num_images synthetic images in this process; RSS before validation and the peak, MiB."""
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    from frcnn_lab.config import CONFIG_DIR
    from frcnn_lab.data.datamodule import DetectionDataModule
    from frcnn_lab.train import build_module

    torch.set_num_threads(1)
    overrides = [
        "backbone.weights=none", f"data.source.num_val={num_images}", "data.source.num_train=2",
        "data.source.num_test=2", f"data.image_size={IMAGE_SIZE}", f"data.max_size={IMAGE_SIZE}", "data.batch_size=8",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    L.seed_everything(0)
    datamodule = DetectionDataModule(cfg.data)
    module = build_module(cfg)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    before = rss_mib()
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {"images": num_images, "rss_before_mib": before, "peak_rss_mib": peak_rss_mib(),
            "val_detections_per_image": float(metrics.get("val/detections_per_image", float("nan")))}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    runs = []
    for size in SIZES:
        result = subprocess.run([sys.executable, __file__, "--measure", str(size)], capture_output=True, text=True,
                                check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        run = runs[-1]
        print(f"{size:5d} images: RSS before validation {run['rss_before_mib']:7.1f} MiB, "
              f"peak {run['peak_rss_mib']:7.1f} MiB (+{run['peak_rss_mib'] - run['rss_before_mib']:.1f} MiB)")
    small, large = runs
    def growth_mib(run: dict[str, float]) -> float:
        return run["peak_rss_mib"] - run["rss_before_mib"]

    growth = growth_mib(large) / max(growth_mib(small), 1e-9)
    peak_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"4x the images: peak RSS x{peak_ratio:.2f}, growth during validation x{growth:.2f}")
    OUTPUT.write_text(json.dumps({"image_size": IMAGE_SIZE, "runs": runs, "peak_ratio_1000_vs_250": peak_ratio,
                                  "growth_ratio_1000_vs_250": growth}, indent=2) + "\n")
    print(f"written: {OUTPUT}")


if __name__ == "__main__":
    main()
