"""Open Images (V6 / V7 layout): prepare a subset, and read a prepared subset.

Command::

    python -m frcnn_lab.data.openimages --classes Camera --per-class 1000 --out data/openimages/camera \\
        --negative-classes Book "Coffee cup" --negatives-per-class 10

1. Class display names -> label ids through ``oidv7-class-descriptions-boxable.csv`` (older releases:
   ``class-descriptions-boxable.csv``, no header).
2. The split's boxes CSV is streamed line by line (the train file is over 1 GB), keeping boxes of the
   requested classes. ``--exclude IsGroupOf IsDepiction ...`` drops every image with such a box of a
   requested class (an unusable box would leave its object unlabelled).
3. ``--per-class`` images per class, drawn with ``--seed`` from the sorted candidates; the negatives:
   ``--negatives-per-class`` images with a box of each ``--negative-classes`` class and none of the
   requested classes.
4. Images are fetched from ``{base_url}/{split}/{ImageID}.jpg`` by ``--workers`` threads, each with
   ``--retries`` retries and exponential backoff; a partial file resumes with an HTTP Range request,
   finished files are checked (length, JPEG decodes) and renamed into place, so a file that exists is
   complete. A failed image is replaced by the next candidate of its class. Rerunning skips verified files.
5. ``manifest.json`` lists every image (split, role, file, bytes, sha256, boxes normalised xyxy, labels)
   and every failure; ``read_subset`` turns it into records for the ``openimages`` data source.

Metadata files are looked for in ``--metadata-dir`` and fetched from ``--metadata-url`` when missing.
Without a network the command stops at once, naming the missing files and where to put them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm
from urllib3.exceptions import HTTPError as TransportError

from frcnn_lab.data.records import DataError, IssueLog, Record, inside_root, safe_image_id

IMAGE_URL = "https://open-images-dataset.s3.amazonaws.com"
METADATA_URL = "https://storage.googleapis.com/openimages"
CLASS_FILES = ("v7/oidv7-class-descriptions-boxable.csv", "v5/class-descriptions-boxable.csv")
BOX_FILES = {
    "train": "v6/oidv6-train-annotations-bbox.csv",
    "validation": "v5/validation-annotations-bbox.csv",
    "test": "v5/test-annotations-bbox.csv",
}
BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
FLAGS = ("IsGroupOf", "IsDepiction", "IsTruncated", "IsOccluded")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "frcnn_lab/openimages-subset/1"
CHUNK = 1 << 16


class OfflineError(RuntimeError):
    """The network cannot be reached: the message says which files are missing and where they go."""


# ---------------------------------------------------------------------------------------------- metadata


def read_class_descriptions(path: Path) -> dict[str, list[str]]:
    """Display name -> label ids (``/m/...``); accepts the V7 header, the old ``id,name`` header or none."""
    names: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as lines:
        for number, row in enumerate(csv.reader(lines), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{number}: expected LabelName,DisplayName, got {row}")
            if number == 1 and not row[0].startswith(("/m/", "/g/")):
                continue  # a header row
            names.setdefault(row[1].strip(), []).append(row[0].strip())
    if not names:
        raise DataError(f"{path}: no classes in the class descriptions file")
    return names


def label_ids(descriptions: dict[str, list[str]], display_names: Iterable[str], path: Path) -> dict[str, str]:
    """Label id -> display name for the requested names; DataError listing close names for unknown ones."""
    ids = {}
    for name in display_names:
        if name not in descriptions:
            close = sorted(n for n in descriptions if name.lower() in n.lower() or n.lower() in name.lower())[:10]
            raise DataError(f"class {name!r} is not in {path}" + (f"; similar: {close}" if close else ""))
        ids.update(dict.fromkeys(descriptions[name], name))
    return ids


@dataclass
class Scan:
    """What one pass over a boxes CSV found, for the requested and the negative label ids."""

    boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # image -> [(label, xyxy)]
    excluded: dict[str, str] = field(default_factory=dict)  # image -> the flag that excluded it
    negatives: dict[str, set[str]] = field(default_factory=dict)  # negative label -> images


def scan_boxes(path: Path, targets: dict[str, str], negatives: dict[str, str], exclude: Sequence[str]) -> Scan:
    """Stream ``path`` once (csv module, line by line): boxes of ``targets``, images of ``negatives``."""
    scan = Scan()
    with open(path, newline="", encoding="utf-8") as lines:
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty boxes file")
        missing = [c for c in (*BOX_COLUMNS, *exclude) if c not in header]
        if missing:
            raise DataError(f"{path}: header lacks {missing}; expected {','.join(BOX_COLUMNS)},... (Open Images "
                            "boxes CSV)")
        column = {name: header.index(name) for name in (*BOX_COLUMNS, *exclude)}
        label_at, image_at = column["LabelName"], column["ImageID"]
        for number, row in enumerate(reader, start=2):
            try:
                label = row[label_at]
            except IndexError:
                raise DataError(f"{path}:{number}: {len(row)} fields, header has {len(header)}") from None
            if label in negatives:
                scan.negatives.setdefault(label, set()).add(row[image_at])
            if label not in targets:
                continue
            image = row[image_at]
            try:
                xmin, xmax, ymin, ymax = (float(row[column[c]]) for c in ("XMin", "XMax", "YMin", "YMax"))
            except (ValueError, IndexError):
                raise DataError(f"{path}:{number}: XMin,XMax,YMin,YMax must be numbers: {row}") from None
            scan.boxes.setdefault(image, []).append((targets[label], [xmin, ymin, xmax, ymax]))
            for flag in exclude:
                if row[column[flag]].strip() == "1" and image not in scan.excluded:
                    scan.excluded[image] = flag
    return scan


# ---------------------------------------------------------------------------------------------- fetching


class IncompleteDownload(IOError):
    """The body ended before its announced length, or the file does not decode."""


@dataclass
class Fetcher:
    """HTTP GET into a file: retries with exponential backoff, Range resume, atomic rename, one session per thread."""

    retries: int = 4
    backoff: float = 1.0
    timeout: float = 30.0
    _local: threading.local = field(default_factory=threading.local)

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _attempt(self, url: str, destination: Path, check_image: bool) -> None:
        partial = destination.with_name(destination.name + ".part")
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.session().get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416:  # the partial file is already whole, or longer than the file
                partial.unlink(missing_ok=True)
                raise IncompleteDownload(f"{url}: range not satisfiable, starting over")
            response.raise_for_status()
            if response.status_code != 206:
                offset = 0  # the server ignored the Range header: the body is the whole file
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            with open(partial, "ab" if offset else "wb") as out:
                # read1 hands over whatever has arrived, so bytes before a broken connection reach the disk
                # and the next attempt resumes after them (iter_content would drop a short last chunk).
                while chunk := response.raw.read1(CHUNK):
                    out.write(chunk)
        size = partial.stat().st_size
        if expected is not None and size != expected:
            raise IncompleteDownload(f"{url}: got {size} of {expected} bytes")
        if check_image:
            try:
                with Image.open(partial) as image:
                    image.verify()
            except Exception as error:  # any decoder complaint means the bytes are not a whole picture
                partial.unlink(missing_ok=True)
                raise IncompleteDownload(f"{url}: not a valid image ({error})") from None
        os.replace(partial, destination)

    def fetch(self, url: str, destination: Path, check_image: bool = False, offline_is_final: bool = False) -> None:
        """Download ``url`` to ``destination`` or raise the last error; 4xx other than 408 / 429 are final,
        and so is a refused or unresolvable connection with ``offline_is_final`` (no network: fail fast)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.retries + 1):
            try:
                self._attempt(url, destination, check_image)
                return
            except requests.ConnectionError as error:
                if offline_is_final and not isinstance(error, requests.ReadTimeout) or attempt == self.retries:
                    raise
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else 0
                if 400 <= status < 500 and status not in (408, 429) or attempt == self.retries:
                    raise
            except (requests.RequestException, TransportError, IncompleteDownload):
                if attempt == self.retries:
                    raise
            time.sleep(self.backoff * 2**attempt * (0.5 + random.random()))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline_message(url: str, error: Exception, files: Sequence[tuple[str, Path]]) -> str:
    lines = [f"cannot reach {url} ({type(error).__name__}: {error}).", "Without a network, fetch these elsewhere:"]
    lines += [f"  {source}  ->  put at {target}" for source, target in files]
    lines.append("and run the command again (files that are present are used as they are).")
    return "\n".join(lines)


def ensure_metadata(metadata_dir: Path, metadata_url: str, relative: Sequence[str], fetcher: Fetcher) -> list[Path]:
    """Local paths of the metadata files, fetching the missing ones; OfflineError when the network is absent."""
    paths = [metadata_dir / Path(r).name for r in relative]
    missing = [(f"{metadata_url}/{r}", p) for r, p in zip(relative, paths, strict=True) if not p.is_file()]
    for url, path in missing:
        try:
            fetcher.fetch(url, path, offline_is_final=True)
        except (requests.ConnectionError, requests.HTTPError) as error:
            raise OfflineError(offline_message(url, error, missing)) from None
    return paths


def class_file(metadata_dir: Path) -> str:
    """The V7 class descriptions, or the older V5 / V6 file when only that one is present."""
    new, old = (metadata_dir / Path(c).name for c in CLASS_FILES)
    return CLASS_FILES[1] if old.is_file() and not new.is_file() else CLASS_FILES[0]


# ---------------------------------------------------------------------------------------------- the subset


@dataclass
class Job:
    image_id: str
    split: str
    role: str  # "target" or "negative"
    group: str  # the class the image was chosen for
    labels: list[str]
    boxes: list[list[float]]

    @property
    def quota(self) -> str:
        return self.group if self.role == "target" else f"negative:{self.group}"


def seeded_candidates(ids: Iterable[str], seed: int, salt: str) -> list[str]:
    """Sorted ids in a seeded order that differs per class (``salt``), independent of the CSV's order."""
    ordered = sorted(ids)
    key = [seed, int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)]
    return [ordered[i] for i in np.random.default_rng(key).permutation(len(ordered))]


def load_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as document:
            return json.load(document)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed manifest JSON ({error.msg})") from None


def write_json_atomically(path: Path, content: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=1)
    os.replace(temporary, path)


class SubsetBuilder:
    """Fills per-class quotas of images, replacing failed downloads with the next candidates."""

    def __init__(self, out: Path, base_url: str, fetcher: Fetcher, workers: int, progress: bool) -> None:
        self.out, self.base_url, self.fetcher, self.workers, self.progress = out, base_url.rstrip("/"), fetcher, \
            workers, progress
        previous = load_manifest(out / MANIFEST)
        self.known = {e["image_id"]: e for e in previous.get("images", [])}
        self.entries: list[dict] = []
        self.failed: list[dict] = []
        self.skipped_verified = 0

    def destination(self, job: Job) -> Path:
        return self.out / "images" / job.split / f"{safe_image_id(job.image_id, 'boxes CSV')}.jpg"

    def _verified(self, job: Job) -> dict | None:
        """Manifest entry for a file already on disk and intact, else None."""
        path = self.destination(job)
        if not path.is_file():
            return None
        known = self.known.get(job.image_id)
        if known and known.get("bytes") == path.stat().st_size and known.get("sha256") == sha256_of(path):
            return {"bytes": known["bytes"], "sha256": known["sha256"]}
        if known is None:  # written by an interrupted run: present means renamed into place, i.e. complete
            try:
                with Image.open(path) as image:
                    image.verify()
                return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
            except Exception:  # a file that does not decode is fetched again
                return None
        return None

    def _entry(self, job: Job, facts: dict) -> dict:
        return {"image_id": job.image_id, "split": job.split, "role": job.role, "class": job.group,
                "file": str(self.destination(job).relative_to(self.out)), **facts,
                "labels": job.labels, "boxes": job.boxes}

    def _download(self, job: Job) -> dict:
        url = f"{self.base_url}/{job.split}/{job.image_id}.jpg"
        path = self.destination(job)
        self.fetcher.fetch(url, path, check_image=True)
        return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}

    def _check_reachable(self, job: Job) -> None:
        url = f"{self.base_url}/{job.split}/{job.image_id}.jpg"
        try:
            self.fetcher.session().head(url, timeout=self.fetcher.timeout)
        except requests.ConnectionError as error:
            pattern = (f"{self.base_url}/<split>/<ImageID>.jpg", self.out / "images" / "<split>" / "<ImageID>.jpg")
            raise OfflineError(offline_message(url, error, [pattern])) from None

    def run(self, quotas: dict[str, tuple[int, list[Job]]]) -> dict[str, int]:
        """quotas: Job.quota -> (wanted, candidate jobs in order). Returns quota -> images short of it."""
        filled = {group: 0 for group in quotas}
        cursor = {group: 0 for group in quotas}
        taken: set[str] = set()
        checked_network = False
        bar = tqdm(total=sum(w for w, _ in quotas.values()), unit="img", disable=not self.progress, file=sys.stderr)
        try:
            while True:
                round_jobs = []
                for group, (wanted, candidates) in quotas.items():
                    need = wanted - filled[group]
                    while need > 0 and cursor[group] < len(candidates):
                        job = candidates[cursor[group]]
                        cursor[group] += 1
                        if job.image_id in taken:
                            continue
                        taken.add(job.image_id)
                        round_jobs.append(job)
                        need -= 1
                if not round_jobs:
                    break
                pending = []
                for job in round_jobs:
                    facts = self._verified(job)
                    if facts is None:
                        pending.append(job)
                        continue
                    self.skipped_verified += 1
                    self.entries.append(self._entry(job, facts))
                    filled[job.quota] += 1
                    bar.update()
                if pending and not checked_network:
                    self._check_reachable(pending[0])
                    checked_network = True
                with ThreadPoolExecutor(self.workers) as pool:
                    futures = {pool.submit(self._download, job): job for job in pending}
                    for future in as_completed(futures):
                        job = futures[future]
                        try:
                            self.entries.append(self._entry(job, future.result()))
                            filled[job.quota] += 1
                            bar.update()
                        except (requests.RequestException, TransportError, IncompleteDownload, OSError) as error:
                            self.failed.append({"image_id": job.image_id, "split": job.split, "class": job.group,
                                                "error": f"{type(error).__name__}: {error}"})
        finally:
            bar.close()
        return {group: wanted - filled[group] for group, (wanted, _) in quotas.items() if filled[group] < wanted}


def build_quotas(scan: Scan, split: str, per_class: dict[str, int], seed: int, role: str,
                 blocked: set[str]) -> dict[str, tuple[int, list[Job]]]:
    """Candidate jobs per requested class (target role) from a scan, leaving out ``blocked`` images."""
    by_class: dict[str, set[str]] = {name: set() for name in per_class}
    for image, boxes in scan.boxes.items():
        if image in scan.excluded or image in blocked:
            continue
        for name, _ in boxes:
            by_class[name].add(image)
    quotas = {}
    for name, wanted in per_class.items():
        jobs = []
        for image in seeded_candidates(by_class[name], seed, name):
            boxes = scan.boxes[image]
            jobs.append(Job(image, split, role, name, [n for n, _ in boxes], [b for _, b in boxes]))
        quotas[name] = (wanted, jobs)
    return quotas


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m frcnn_lab.data.openimages", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", nargs="+", required=True, help='display names, e.g. Camera "Mobile phone"')
    parser.add_argument("--per-class", nargs="+", type=int, default=[1000],
                        help="images per class: one number, or one per class (default 1000)")
    parser.add_argument("--split", choices=sorted(BOX_FILES), default="train")
    parser.add_argument("--negative-classes", nargs="*", default=[], help="classes of the negatives set")
    parser.add_argument("--negatives-per-class", type=int, default=10)
    parser.add_argument("--negatives-split", choices=sorted(BOX_FILES), default=None, help="default: --split")
    parser.add_argument("--exclude", nargs="*", choices=FLAGS, default=["IsGroupOf", "IsDepiction"],
                        help="drop images with a box of a requested class flagged so (default: IsGroupOf "
                             "IsDepiction; give --exclude alone to keep all)")
    parser.add_argument("--out", type=Path, required=True, help="the subset's folder (images/, manifest.json)")
    parser.add_argument("--metadata-dir", type=Path, default=Path("data/openimages/metadata"))
    parser.add_argument("--base-url", default=IMAGE_URL, help="image bucket or a mirror: {base-url}/{split}/{id}.jpg")
    parser.add_argument("--metadata-url", default=METADATA_URL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--retries", type=int, default=4)
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry; doubles")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to connect / between bytes")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.per_class) not in (1, len(args.classes)):
        parser.error(f"--per-class takes one number or {len(args.classes)} (one per class)")
    return args


def prepare_subset(args: argparse.Namespace) -> dict:
    """Run the whole preparation; returns the manifest it wrote."""
    fetcher = Fetcher(retries=args.retries, backoff=args.backoff, timeout=args.timeout)
    metadata_url = args.metadata_url.rstrip("/")
    negatives_split = args.negatives_split or args.split
    needed = [class_file(args.metadata_dir), *(BOX_FILES[s] for s in dict.fromkeys([args.split, negatives_split]))]
    classes_path, *box_paths = ensure_metadata(args.metadata_dir, metadata_url, needed, fetcher)
    descriptions = read_class_descriptions(classes_path)
    targets = label_ids(descriptions, args.classes, classes_path)
    negatives = label_ids(descriptions, args.negative_classes, classes_path)
    per_class = dict(zip(args.classes, args.per_class * len(args.classes) if len(args.per_class) == 1
                         else args.per_class, strict=True))
    scan = scan_boxes(box_paths[0], targets, negatives if negatives_split == args.split else {}, args.exclude)
    quotas = build_quotas(scan, args.split, per_class, args.seed, "target", set())
    negative_quotas = {}
    if negatives:
        negative_scan = scan if negatives_split == args.split else scan_boxes(box_paths[-1], targets, negatives, [])
        has_target = set(negative_scan.boxes)
        for label, name in negatives.items():
            images = negative_scan.negatives.get(label, set()) - has_target
            order = seeded_candidates(images, args.seed, name)
            jobs = [Job(i, negatives_split, "negative", name, [], []) for i in order]
            wanted, previous = negative_quotas.get(name, (args.negatives_per_class, []))
            negative_quotas[name] = (wanted, previous + jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    builder = SubsetBuilder(args.out, args.base_url, fetcher, args.workers, not args.no_progress)
    manifest = {"format": MANIFEST_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "classes": {n: descriptions[n] for n in args.classes},
                "negative_classes": {n: descriptions[n] for n in args.negative_classes},
                "excluded_by_flag": len(scan.excluded)}
    try:
        shortfall = builder.run({**quotas, **{f"negative:{k}": v for k, v in negative_quotas.items()}})
    finally:
        manifest.update(images=builder.entries, failed=builder.failed, skipped_verified=builder.skipped_verified)
        write_json_atomically(args.out / MANIFEST, manifest)
    manifest["shortfall"] = shortfall
    write_json_atomically(args.out / MANIFEST, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifest = prepare_subset(args)
    except (OfflineError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    roles = [e["role"] for e in manifest["images"]]
    print(f"{roles.count('target')} images, {roles.count('negative')} negatives in {args.out / MANIFEST} "
          f"({manifest['skipped_verified']} already present and verified, {len(manifest['failed'])} failed)")
    for group, missing in manifest["shortfall"].items():
        print(f"warning: {group}: {missing} images short of the quota (candidates ran out)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- reading


def read_subset(root: str | os.PathLike, issues: IssueLog) -> dict[str, list[Record]]:
    """Records of a prepared subset: ``train`` (the requested classes' images) and ``negatives``."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the subset first, e.g. python -m frcnn_lab.data.openimages "
                        f"--classes Camera --per-class 1000 --out {root}")
    manifest = load_manifest(path)
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("images"), list):
        raise DataError(f"{path}: not a manifest of python -m frcnn_lab.data.openimages ({MANIFEST_FORMAT})")
    records: dict[str, list[Record]] = {"train": [], "negatives": []}
    for position, entry in enumerate(manifest["images"]):
        where = f"{path}: images[{position}]"
        try:
            image_id = safe_image_id(str(entry["image_id"]), where)
            file = inside_root(root, str(entry["file"]), where)
            boxes = np.array(entry["boxes"], np.float32).reshape(-1, 4)
            labels = [str(n) for n in entry["labels"]]
            role = entry["role"]
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(f"{where}: malformed entry ({type(error).__name__}: {error})") from None
        if role not in ("target", "negative") or len(labels) != len(boxes):
            raise DataError(f"{where}: role must be target or negative, with one label per box")
        record = Record(image_id, file, boxes, labels, np.zeros(len(labels), bool), where, normalized=True)
        records["train" if role == "target" else "negatives"].append(record)
    for failure in manifest.get("failed", []):
        issues.add("train", f"{path}: {failure.get('image_id')}", "download failed")
    if not records["train"]:
        raise DataError(f"{path}: no images in the manifest")
    return records


if __name__ == "__main__":
    sys.exit(main())
