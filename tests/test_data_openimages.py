"""The Open Images command against a real HTTP server on 127.0.0.1 serving a small fake bucket.

The server lays files out like the real sources (``<metadata>/v7/oidv7-class-descriptions-boxable.csv``,
``<metadata>/v6/oidv6-train-annotations-bbox.csv``, ``<bucket>/train/<ImageID>.jpg``), answers Range
requests, and can misbehave per file: 404, a slow first answer, a first body cut short of its
Content-Length, or 503.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data import openimages
from frcnn_lab.data.records import IssueLog

HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,"
          "IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y")
CAMERA, PHONE, BOOK = "/m/0dv5r", "/m/050k8", "/m/0bt_c3"


def box_row(image: str, label: str, box=(0.1, 0.5, 0.2, 0.6), group_of: int = 0) -> str:
    xmin, xmax, ymin, ymax = box
    return f"{image},xclick,{label},1,{xmin},{xmax},{ymin},{ymax},0,0,{group_of},0,0,-1,-1,-1,-1,-1,-1,-1,-1"


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


class FakeBucket:
    """Files by URL path, per-path misbehaviour, and a log of (path, Range header) requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}  # "slow" | "truncate" | "unavailable" (each only on the first GET)
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def handler(self):
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with bucket.lock:
                    bucket.requests.append((self.path, self.headers.get("Range")))
                    first = sum(p == self.path for p, _ in bucket.requests) == 1
                data = bucket.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                behaviour = bucket.behaviour.get(self.path) if first else None
                if behaviour == "unavailable":
                    self.send_error(503)
                    return
                if behaviour == "slow":
                    time.sleep(1.5)
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if behaviour == "truncate":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow answer, as it should

        return Handler


@pytest.fixture
def bucket():
    fake = FakeBucket()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def publish(bucket: FakeBucket, rows: list[str], images: list[str]) -> None:
    bucket.files["/meta/v7/oidv7-class-descriptions-boxable.csv"] = (
        f"LabelName,DisplayName\n{CAMERA},Camera\n{PHONE},Mobile phone\n{BOOK},Book\n".encode())
    bucket.files["/meta/v6/oidv6-train-annotations-bbox.csv"] = ("\n".join([HEADER, *rows]) + "\n").encode()
    for seed, image in enumerate(images):
        bucket.files[f"/bucket/train/{image}.jpg"] = jpeg(seed)


def command(bucket: FakeBucket, out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--metadata-dir", str(out.parent / "meta"), "--metadata-url", f"{bucket.url}/meta",
            "--base-url", f"{bucket.url}/bucket", "--timeout", "0.5", "--backoff", "0.01", "--workers", "4",
            "--no-progress", *extra]


def gets(bucket: FakeBucket, image: str) -> list[str | None]:
    return [r for p, r in bucket.requests if p == f"/bucket/train/{image}.jpg"]


def test_subset_survives_missing_slow_and_truncated_files(bucket, tmp_path):
    rows = [box_row("c1", CAMERA, (0.1, 0.5, 0.2, 0.6)), box_row("c1", CAMERA, (0.6, 0.9, 0.1, 0.3)),
            box_row("c2", CAMERA), box_row("c3", CAMERA), box_row("c5", CAMERA, group_of=1),
            box_row("p1", PHONE), box_row("p2", PHONE), box_row("b1", BOOK), box_row("b2", BOOK),
            box_row("b2", CAMERA, group_of=1), box_row("b3", BOOK)]
    # The phone drawn first with seed 0 is missing from the bucket (404): the other one must replace it.
    missing, spare = openimages.seeded_candidates(["p1", "p2"], 0, "Mobile phone")
    publish(bucket, rows, ["c1", "c2", "c3", "c5", spare, "b1", "b2", "b3"])
    bucket.behaviour.update({"/bucket/train/c2.jpg": "slow", "/bucket/train/c3.jpg": "truncate"})
    out = tmp_path / "subset"
    code = openimages.main(command(bucket, out, "--classes", "Camera", "Mobile phone", "--per-class", "3", "1",
                                   "--negative-classes", "Book", "--negatives-per-class", "2", "--retries", "2"))
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_role = {r: {e["image_id"] for e in manifest["images"] if e["role"] == r} for r in ("target", "negative")}
    assert by_role == {"target": {"c1", "c2", "c3", spare}, "negative": {"b1", "b3"}}
    assert [f["image_id"] for f in manifest["failed"]] == [missing] and "404" in manifest["failed"][0]["error"]
    assert gets(bucket, "c5") == [] and gets(bucket, "b2") == []  # group-of and not-a-negative: never fetched
    assert len(gets(bucket, "c2")) == 2  # timed out once, then fetched
    half = len(bucket.files["/bucket/train/c3.jpg"]) // 2
    assert gets(bucket, "c3") == [None, f"bytes={half}-"]  # cut short, then resumed where it stopped
    for entry in manifest["images"]:
        data = (out / entry["file"]).read_bytes()
        assert data == bucket.files[f"/bucket/train/{entry['image_id']}.jpg"]
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    c1 = next(e for e in manifest["images"] if e["image_id"] == "c1")
    assert c1["labels"] == ["Camera", "Camera"] and c1["boxes"] == [[0.1, 0.2, 0.5, 0.6], [0.6, 0.1, 0.9, 0.3]]
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp"))

    records = openimages.read_subset(out, IssueLog())
    assert {r.image_id for r in records["train"]} == {"c1", "c2", "c3", spare}
    assert {r.image_id for r in records["negatives"]} == {"b1", "b3"}


def test_rerun_resumes_an_interrupted_download_and_skips_verified_files(bucket, tmp_path):
    publish(bucket, [box_row(i, CAMERA) for i in ("c1", "c2", "c3")], ["c1", "c2", "c3"])
    bucket.behaviour["/bucket/train/c3.jpg"] = "truncate"  # the first run breaks off in the middle of c3
    out = tmp_path / "subset"
    arguments = command(bucket, out, "--classes", "Camera", "--per-class", "3", "--retries", "0")
    assert openimages.main(arguments) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert {e["image_id"] for e in first["images"]} == {"c1", "c2"} and first["shortfall"] == {"Camera": 1}
    partial = out / "images" / "train" / "c3.jpg.part"
    assert partial.is_file() and not (out / "images" / "train" / "c3.jpg").exists()

    before = len(bucket.requests)
    assert openimages.main(arguments) == 0
    second = json.loads((out / "manifest.json").read_text())
    again = bucket.requests[before:]
    # Only c3 is asked for again, from where the first run stopped; c1 and c2 are verified on disk.
    assert again == [("/bucket/train/c3.jpg", f"bytes={len(bucket.files['/bucket/train/c3.jpg']) // 2}-")]
    assert {e["image_id"] for e in second["images"]} == {"c1", "c2", "c3"} and second["skipped_verified"] == 2
    assert (out / "images" / "train" / "c3.jpg").read_bytes() == bucket.files["/bucket/train/c3.jpg"]


def test_a_changed_file_on_disk_is_fetched_again(bucket, tmp_path):
    publish(bucket, [box_row("c1", CAMERA)], ["c1"])
    out = tmp_path / "subset"
    arguments = command(bucket, out, "--classes", "Camera", "--per-class", "1")
    assert openimages.main(arguments) == 0
    (out / "images" / "train" / "c1.jpg").write_bytes(jpeg(99))  # not what the manifest recorded
    assert openimages.main(arguments) == 0
    assert len(gets(bucket, "c1")) == 2
    assert (out / "images" / "train" / "c1.jpg").read_bytes() == bucket.files["/bucket/train/c1.jpg"]


def test_without_network_it_fails_fast_naming_the_missing_files(tmp_path, capsys):
    out = tmp_path / "subset"
    started = time.perf_counter()
    code = openimages.main(["--classes", "Camera", "--out", str(out), "--metadata-dir", str(tmp_path / "meta"),
                            "--metadata-url", "http://127.0.0.1:9", "--retries", "3", "--no-progress"])
    assert code == 2 and time.perf_counter() - started < 5
    message = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9/v7/oidv7-class-descriptions-boxable.csv" in message
    for name, folder in (("oidv7-class-descriptions-boxable.csv", "v7"), ("oidv6-train-annotations-bbox.csv", "v6")):
        assert f"http://127.0.0.1:9/{folder}/{name}  ->  put at {tmp_path / 'meta' / name}" in message


def test_unknown_class_name_suggests_close_ones(bucket, tmp_path, capsys):
    publish(bucket, [box_row("c1", CAMERA)], ["c1"])
    assert openimages.main(command(bucket, tmp_path / "subset", "--classes", "Mobile")) == 2
    assert "class 'Mobile' is not in" in capsys.readouterr().err


def test_class_descriptions_without_header_are_read(tmp_path):
    (tmp_path / "old.csv").write_text(f"{CAMERA},Camera\n{PHONE},Mobile phone\n")
    assert openimages.read_class_descriptions(tmp_path / "old.csv") == {"Camera": [CAMERA], "Mobile phone": [PHONE]}
