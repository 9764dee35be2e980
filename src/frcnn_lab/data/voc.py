"""Pascal VOC 2007 / 2012: ``VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``.

An image set is named ``"<year>/<set>"`` (``2007/trainval``, ``2007/test``, ``2012/train``...). Boxes in
the XML are 1-based inclusive pixel coordinates; they become 0-based xyxy with exclusive right and
bottom edges (x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax). ``difficult`` comes through per box.
Image ids are ``<year>/<id>`` (``2007/000005``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from frcnn_lab.data.records import DataError, IssueLog, Record, safe_image_id

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
YEARS = ("2007", "2012")


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


def parse_annotation(path: Path, image_dir: Path) -> Record:
    """One VOC XML file -> Record (boxes 0-based xyxy, names, difficult)."""
    root = parse_xml(path)
    filename = root.find("filename")
    image_name = filename.text if filename is not None and filename.text else f"{path.stem}.jpg"
    image_path = image_dir / safe_image_id(image_name, f"{path}:{filename.line if filename else root.line}")
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
                  np.array(difficult, bool), str(path), box_where=lines)


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


def read_image_set(root: str | os.PathLike, image_set: str, split: str, issues: IssueLog,
                   download_missing: bool = False) -> list[Record]:
    """Records of ``"<year>/<set>"``; images whose XML is missing are logged and left out."""
    year, _, name = image_set.partition("/")
    if year not in YEARS or not name:
        raise DataError(f"VOC image set {image_set!r} must be '<year>/<set>' with year in {list(YEARS)}")
    base = devkit_dir(root) / f"VOC{year}"
    listing = base / "ImageSets" / "Main" / f"{name}.txt"
    if not listing.is_file() and download_missing:
        download(root, image_set)
    if not listing.is_file():
        raise DataError(
            f"Pascal VOC {image_set}: {listing} not found. Set data.source.download=true (needs a network) or "
            f"unpack the VOC tars under {Path(root)} (VOCdevkit/VOC{year}/...)"
        )
    records = []
    with open(listing, encoding="utf-8") as ids:
        for number, line in enumerate(ids, start=1):
            image_id = line.split()[0] if line.strip() else ""
            if not image_id:
                continue
            safe_image_id(image_id, f"{listing}:{number}")
            xml = base / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                issues.add(split, str(xml), "annotation: missing file")
                continue
            record = parse_annotation(xml, base / "JPEGImages")
            record.image_id = f"{year}/{image_id}"  # VOC2012 reuses ids like 2007_000027 for other pictures
            records.append(record)
    if not records:
        raise DataError(f"{listing}: no images in the image set")
    return records
