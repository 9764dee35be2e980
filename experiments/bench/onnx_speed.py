"""Inference speed of the exported ONNX model in onnxruntime next to the PyTorch detector, on the CPU.

    python experiments/bench/onnx_speed.py --threads 1 --repeats 20 --output experiments/bench/onnx_results.json
    python experiments/bench/onnx_speed.py --ckpt <run>/checkpoints/best.ckpt --image-size 600

The PyTorch side is the detector's own forward (``module([image])``, ``torch.inference_mode``); the
onnxruntime side runs the file ``frcnn_lab.export`` writes (the same detector traced by
``export_onnx``) in a CPU session. Both get the same resized images (synthetic scenes of ``--image-size``
on the short side) and ``--threads`` threads. Without ``--ckpt`` the detector is the default config's
(MobileNetV2 with ImageNet weights, freshly initialised RPN and head). Each figure is the median ms per
image over ``--repeats`` rounds after ``--warmup`` untimed ones; the two runtimes alternate within a round
(order swapped every round) so machine noise hits both alike. Prints a table and writes the figures, the
command and the machine as JSON to ``--output`` (never over an existing file unless ``--overwrite``).
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

import numpy as np
import onnxruntime
import torch
from hydra import compose, initialize_config_dir

from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.export import export_metadata, export_onnx
from frcnn_lab.inference.onnx_detector import OnnxDetector
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.train import build_module


def detector(ckpt: Path | None) -> DetectionModule:
    if ckpt is not None:
        return load_module(ckpt, torch.device("cpu"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["logger=csv"])
    torch.manual_seed(0)
    return build_module(cfg).eval()


def images(preprocess: PreprocessConfig, count: int) -> list[torch.Tensor]:
    """Synthetic scenes (square, landscape, portrait) resized the training way."""
    scenes = SyntheticScenes(count, seed=11)
    transforms = build_transforms(preprocess, train=False)
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "image_id": "bench"}
    return [apply_transforms(transforms, {**empty, "image": scenes[i]["image"]})[0] for i in range(count)]


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    module = detector(args.ckpt)
    preprocess = module.preprocess.at(args.image_size, args.image_size * 2)
    inputs = images(preprocess, args.images)
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(module, Path(folder) / "model.onnx", export_metadata(module, preprocess))
        runner = OnnxDetector(path, threads=args.threads)

    def with_torch(image: torch.Tensor) -> None:
        with torch.inference_mode():
            module([image])

    runtimes = {"pytorch": with_torch, "onnxruntime": lambda image: runner([image])}
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for round_index in range(args.warmup + args.repeats):
        order = list(runtimes) if round_index % 2 == 0 else list(reversed(runtimes))
        for name in order:
            start = time.perf_counter()
            for image in inputs:
                runtimes[name](image)
            if round_index >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - start) / len(inputs))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "checkpoint": str(args.ckpt) if args.ckpt else "default config, ImageNet MobileNetV2, initialised head",
        "image_size": args.image_size, "input_sizes": sorted({tuple(i.shape[-2:]) for i in inputs}),
        "images_per_round": len(inputs), "repeats": args.repeats, "warmup": args.warmup,
        "ms_per_image_median": medians, "onnxruntime_over_pytorch": medians["onnxruntime"] / medians["pytorch"],
        "ms_per_image_all": times,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "threads": args.threads, "load_average": os.getloadavg(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="a checkpoint (default: the default config)")
    parser.add_argument("--image-size", type=int, default=320, help="shortest side of the resized images")
    parser.add_argument("--images", type=int, default=6, help="images per round")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.overwrite:
        parser.error(f"--output {args.output} exists; pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    medians = results["ms_per_image_median"]
    print(f"| runtime | ms per image (median of {args.repeats}) |\n| --- | ---: |")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} |")
    print(f"onnxruntime / pytorch = {results['onnxruntime_over_pytorch']:.2f} "
          f"({args.threads} thread(s), {args.image_size} px, load average {results['machine']['load_average'][0]:.1f})")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))
        print(f"written: {args.output}")


if __name__ == "__main__":
    main()
