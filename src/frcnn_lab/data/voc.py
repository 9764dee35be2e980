"""Pascal VOC XML: the official 2007 / 2012 sets (data=voc), and any folder in the VOC layout (data=voc_folder).

Official: ``VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``; an image set is named
``"<year>/<set>"`` (``2007/trainval``, ``2007/test``, ``2012/train``...) and image ids are ``<year>/<id>``
(``2007/000005``).

A VOC-layout folder is what LabelImg, CVAT, Label Studio and Roboflow export; a set entry ``<set>`` is
the list ``ImageSets/Main/<set>.txt`` of the folder when it exists, otherwise a
folder under it (``.``: the folder itself) whose XML files are all read, from ``Annotations/`` when
there is one (subfolders included), else beside the images. Image ids are the XML paths without
``.xml`` (relative to ``Annotations/``, prefixed by the folder entry unless it is ``.``).

The image of an XML file is its ``<filename>`` in ``JPEGImages/``, ``images/`` or the XML's own folder,
else a file there named like the XML (or like ``<filename>``) with any image suffix. Boxes in the XML
are 1-based inclusive pixel coordinates; they become 0-based xyxy with exclusive right and bottom edges
(x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax). ``difficult`` comes through per box; ``<size>``
(when its width and height are positive) is the size the boxes were drawn on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from frcnn_lab.data.records import DataError, IssueLog, Record, inside_root, safe_image_id

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
YEARS = ("2007", "2012")
OFFICIAL_SET = re.compile(r"(2007|2012)/[^/]+")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_FOLDERS = ("JPEGImages", "images")


@dataclass
class Node:
    """An XML element with the line it starts on."""

    tag: str
    line: int
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def find(self, tag: str) -> Node | None:
        return next((c for c in self.children if c.tag == tag), None)


def parse_xml(path: Path) -> Node:
    """The document's root Node; DataError naming file and line when the XML is malformed."""
    parser = expat.ParserCreate()
    stack: list[Node] = [Node("", 0)]

    def start(tag: str, attributes: dict) -> None:
        node = Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack[-1].text = stack[-1].text.strip()
        stack.pop()

    def text(data: str) -> None:
        stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        with open(path, "rb") as document:
            parser.ParseFile(document)
    except expat.ExpatError as error:
        raise DataError(f"{path}:{error.lineno}: malformed XML ({expat.errors.messages[error.code]})") from None
    if not stack[0].children:
        raise DataError(f"{path}: empty XML document")
    return stack[0].children[0]


def _number(node: Node, tag: str, path: Path) -> float:
    child = node.find(tag)
    if child is None:
        raise DataError(f"{path}:{node.line}: <{node.tag}> has no <{tag}>")
    try:
        return float(child.text)
    except ValueError:
        raise DataError(f"{path}:{child.line}: <{tag}>{child.text}</{tag}> is not a number") from None


class ImageFinder:
    """The image an XML file annotates, looked up in candidate folders (first match wins)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = [Path(f) for f in folders]
        self._by_stem: dict[Path, dict[str, Path]] = {}

    def _stems(self, folder: Path) -> dict[str, Path]:
        if folder not in self._by_stem:
            files = sorted(folder.iterdir()) if folder.is_dir() else []
            self._by_stem[folder] = {}
            for file in files:
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    self._by_stem[folder].setdefault(file.stem, file)
        return self._by_stem[folder]

    def find(self, filename: str | None, stem: str, where: str) -> Path:
        """``filename`` in the first folder holding it, else ``<stem>.<any image suffix>`` (or the filename's
        stem); the first candidate path when nothing exists (the image check then reports it missing)."""
        if filename:
            candidates = [inside_root(folder, filename, where) for folder in self.folders]
            if found := next((c for c in candidates if c.is_file()), None):
                return found
        for name in dict.fromkeys([stem, Path(filename).stem if filename else stem]):
            for folder in self.folders:
                if found := self._stems(folder).get(name):
                    return found
        return candidates[0] if filename else self.folders[0] / f"{stem}.jpg"


def _size(root: Node, path: Path) -> tuple[int, int] | None:
    """(height, width) of ``<size>`` when both are positive; tools write 0 when they did not know it."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None
    width, height = _number(size, "width", path), _number(size, "height", path)
    return (int(height), int(width)) if width > 0 and height > 0 else None


def parse_annotation(path: Path, images: Path | ImageFinder) -> Record:
    """One VOC XML file -> Record (boxes 0-based xyxy, names, difficult, the annotated size).

    ``images``: the image folder, or an ImageFinder over several.
    """
    root = parse_xml(path)
    if root.tag != "annotation":
        raise DataError(f"{path}:{root.line}: not a Pascal VOC annotation (root element <{root.tag}>, "
                        "expected <annotation>)")
    finder = images if isinstance(images, ImageFinder) else ImageFinder([images])
    filename = root.find("filename")
    image_path = finder.find(filename.text if filename is not None else None, path.stem,
                             f"{path}:{filename.line if filename is not None else root.line}")
    boxes, names, difficult, lines = [], [], [], []
    for obj in (c for c in root.children if c.tag == "object"):
        name = obj.find("name")
        if name is None or not name.text:
            raise DataError(f"{path}:{obj.line}: <object> has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}:{obj.line}: <object> has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        flag = obj.find("difficult")
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append(name.text)
        difficult.append(flag is not None and flag.text.strip() == "1")
        lines.append(f"{path}:{obj.line}")
    return Record(path.stem, image_path, np.array(boxes, np.float32).reshape(-1, 4), names,
                  np.array(difficult, bool), str(path), box_where=lines, size=_size(root, path))


def devkit_dir(root: str | os.PathLike) -> Path:
    """``root/VOCdevkit``, or ``root`` itself when it is the VOCdevkit folder."""
    root = Path(root)
    return root if root.name == "VOCdevkit" else root / "VOCdevkit"


def download(root: str | os.PathLike, image_set: str) -> None:
    """Fetch one image set with torchvision (needs a network); DataError saying where to put it otherwise."""
    from torchvision.datasets import VOCDetection

    year, name = image_set.split("/", 1)
    target = Path(root).parent if Path(root).name == "VOCdevkit" else Path(root)
    try:
        VOCDetection(str(target), year=year, image_set=name, download=True)
    except Exception as error:  # network and archive errors alike: say what is missing and where it goes
        raise DataError(
            f"could not download Pascal VOC {image_set} ({type(error).__name__}: {error}). Without a network, "
            f"unpack VOCtrainval/VOCtest tars so that {devkit_dir(root)}/VOC{year}/ImageSets/Main/{name}.txt exists"
        ) from None


def _listed_ids(listing: Path) -> list[tuple[str, int]]:
    """(image id, line number) of each non-blank line of an ImageSets list (the first word: ids may be
    followed by a 1 / -1 class flag)."""
    with open(listing, encoding="utf-8") as lines:
        return [(line.split()[0], number) for number, line in enumerate(lines, start=1) if line.strip()]


def _official_set(root: str | os.PathLike, image_set: str, split: str, issues: IssueLog,
                  download_missing: bool) -> list[Record]:
    year, name = image_set.split("/")
    base = devkit_dir(root) / f"VOC{year}"
    listing = base / "ImageSets" / "Main" / f"{name}.txt"
    if not listing.is_file() and download_missing:
        download(root, image_set)
    if not listing.is_file():
        raise DataError(
            f"Pascal VOC {image_set}: {listing} not found. Set data.source.download=true (needs a network) or "
            f"unpack the VOC tars under {Path(root)} (VOCdevkit/VOC{year}/...). For a VOC-layout folder of "
            "your own use data=voc_folder"
        )
    finder, records = ImageFinder([base / "JPEGImages"]), []
    for image_id, number in _listed_ids(listing):
        safe_image_id(image_id, f"{listing}:{number}")
        xml = base / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            issues.add(split, str(xml), "annotation: missing file")
            continue
        record = parse_annotation(xml, finder)
        record.image_id = f"{year}/{image_id}"  # VOC2012 reuses ids like 2007_000027 for other pictures
        records.append(record)
    if not records:
        raise DataError(f"{listing}: no images in the image set")
    return records


def _folder_set(root: Path, entry: str, split: str, issues: IssueLog) -> list[Record]:
    where = f"data.source.{split}: {entry!r}"
    if not root.is_dir():
        raise DataError(f"data.source.root {root} is not a folder")
    root = root.resolve()
    listing = root / "ImageSets" / "Main" / f"{entry}.txt"
    annotations = (root / "Annotations").resolve() if (root / "Annotations").is_dir() else root
    if "/" not in entry and entry not in (".", "..") and listing.is_file():
        xmls = [(image_id, inside_root(annotations, f"{image_id}.xml", f"{listing}:{number}"))
                for image_id, number in _listed_ids(listing)]
        folder = root
    else:
        folder = inside_root(root, entry, where)
        if not folder.is_dir():
            raise DataError(f"{where} is neither an image set list {listing} nor a folder under {root}")
        annotations = (folder / "Annotations").resolve() if (folder / "Annotations").is_dir() else folder
        prefix = "" if folder == root else folder.relative_to(root).as_posix() + "/"
        xmls = [(prefix + xml.relative_to(annotations).with_suffix("").as_posix(), xml)
                for xml in sorted(annotations.rglob("*.xml"))]
        if not xmls:
            raise DataError(f"{where}: no .xml annotation files in {annotations} (subfolders included)")
    finders: dict[Path, ImageFinder] = {}
    records = []
    for image_id, xml in xmls:
        if not xml.is_file():
            issues.add(split, str(xml), "annotation: missing file")
            continue
        relative = xml.parent.relative_to(annotations)
        if xml.parent not in finders:
            finders[xml.parent] = ImageFinder([*(folder / f / relative for f in IMAGE_FOLDERS), xml.parent])
        record = parse_annotation(xml, finders[xml.parent])
        record.image_id = image_id
        records.append(record)
    if not records:
        raise DataError(f"{where}: no annotation file found in {annotations}")
    return records


def read_image_set(root: str | os.PathLike, image_set: str, split: str, issues: IssueLog,
                   download_missing: bool = False) -> list[Record]:
    """Records of an official set ``"<year>/<set>"``; images whose XML is missing are logged and left out."""
    if not OFFICIAL_SET.fullmatch(image_set):
        raise DataError(f"VOC image set {image_set!r} must be '<year>/<set>' with year in {list(YEARS)}; for a "
                        "VOC-layout folder of your own use data=voc_folder")
    return _official_set(root, image_set, split, issues, download_missing)


def read_folder_set(root: str | os.PathLike, entry: str, split: str, issues: IssueLog) -> list[Record]:
    """Records of a VOC-layout folder's ``ImageSets/Main/<entry>.txt`` list, or of every XML file in the
    folder ``entry`` under ``root``; images whose XML is missing are logged and left out."""
    return _folder_set(Path(root), entry, split, issues)
