"""Loading checkpoints, for the entry points that use a trained model (evaluate, predict, serve, export).

A checkpoint written by ``frcnn_lab.train`` stands alone: its hyperparameters hold the model config, the
classes and their dataset category ids, the detector's preprocessing (input sizes, normalisation), and loading it
builds the network without any pretrained weights before its own state dict fills it in.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.errors import BadInputError, MissingInputError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N`` -> the device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def check_checkpoint(ckpt_path: str | Path) -> None:
    """Raise a UserError naming ``ckpt_path`` unless it is a checkpoint file that torch reads (its tensors are
    mapped, not loaded: cheap enough to check before anything else starts)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise MissingInputError(f"ckpt_path={ckpt_path}: no such checkpoint file",
                                hint="training writes <run dir>/checkpoints/best.ckpt and last.ckpt")
    if not zipfile.is_zipfile(path):
        raise BadInputError(f"ckpt_path={ckpt_path}: not a checkpoint, or a damaged one (not a complete zip archive, "
                            "which torch.save writes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch's error for a damaged file varies (RuntimeError, UnpicklingError, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInputError(f"ckpt_path={ckpt_path}: the checkpoint cannot be read ({reason})") from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise BadInputError(f"ckpt_path={ckpt_path}: not a checkpoint written by frcnn_lab.train (it lacks "
                                   "state_dict or hyper_parameters)")


def load_module(ckpt_path: str | Path, device: torch.device | str = "cpu") -> DetectionModule:
    """The trained DetectionModule in eval mode on ``device``, built from the checkpoint alone (no pretrained
    weights read or downloaded); a missing or unreadable file is a UserError naming it."""
    check_checkpoint(ckpt_path)
    module = DetectionModule.load_from_checkpoint(ckpt_path, map_location=device, weights_only=True)
    return module.eval().to(device)
