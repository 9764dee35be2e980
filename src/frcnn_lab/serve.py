"""A web page and a JSON endpoint for photos:
``python -m frcnn_lab.serve ckpt_path=<run>/checkpoints/best.ckpt [port=8000]`` (or ``model=<file>.onnx``).

- ``GET /[?score_threshold=T]``: a page to upload a photo or pick an example; the boxes are drawn with class names
  and scores, and a slider sets the score threshold, starting at ``T`` (else the ``score_threshold`` key, else 0):
  the page asks for every detection once and filters as ``POST /predict?score_threshold=<slider>`` would.
- ``POST /predict[?score_threshold=T]`` (multipart field ``file``): ``{"width", "height", "classes",
  "score_threshold", "detections": [{"box": [x1, y1, x2, y2] (pixels), "label": 1..K, "class", "score"}]}``,
  best first: the detections scoring at least ``T`` (0 to 1; else the ``score_threshold`` key); with neither,
  every detection the model keeps (its own cut-off, ``roi_head.score_thresh``), and ``"score_threshold": null``.
  Bad uploads get a 4xx answer whose ``detail`` says what is wrong: 400 empty or not a readable image,
  413 larger than ``max_upload_mb`` or with more than ``max_upload_megapixels``; 422 a threshold outside [0, 1].
- ``GET /examples``: the example names; ``GET /examples/<name>``: the example as PNG. Examples are the images
  of the ``examples`` folder, or, when it is null, scenes of the embedded synthetic dataset.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, Response
from omegaconf import DictConfig
from PIL import Image

from frcnn_lab.cli import hydra_main
from frcnn_lab.data.images import ImageError, load, probe
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.engine.photos import PhotoDetector, configured_photo_detector
from frcnn_lab.errors import MissingInputError
from frcnn_lab.inference.drawing import CLASS_COLORS

log = logging.getLogger(__name__)
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PAGE = (Path(__file__).parent / "serve_page.html").read_text()


def example_images(folder: str | None, count: int = 3) -> dict[str, bytes]:
    """name -> PNG / JPEG bytes: the images of ``folder``, else ``count`` synthetic scenes."""
    if folder is None:
        scenes = SyntheticScenes(count, seed=7, empty_fraction=0.0)
        examples = {}
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(scenes[i]["image"]).save(buffer, format="PNG")
            examples[f"scene{i}.png"] = buffer.getvalue()
        return examples
    if not Path(folder).is_dir():
        raise MissingInputError(f"examples={folder}: no such folder")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
    if not files:
        raise MissingInputError(f"examples={folder}: no images ({', '.join(EXAMPLE_SUFFIXES)})")
    return {p.name: p.read_bytes() for p in files}


def read_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> uint8 (H, W, 3) RGB, or an HTTPException (400 / 413) that says what is wrong.

    The pixel count is read from the header before decoding: a small file can hold a huge picture."""
    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name}: larger than the limit of {max_bytes / 2**20:g} MB (max_upload_mb)")
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as file:
        file.write(data)
        file.flush()
        try:
            header = probe(file.name)
            height, width = header.height, header.width
            if height * width > max_pixels:
                raise HTTPException(413, f"{name}: {width}x{height} pixels, more than the limit of "
                                         f"{max_pixels / 1e6:g} megapixels (max_upload_megapixels)")
            return load(file.name)
        except ImageError as error:
            raise HTTPException(400, f"{name}: {str(error).removeprefix(file.name + ': ')}") from None


Threshold = Annotated[float | None, Query(ge=0, le=1, description="keep detections scoring at least this")]


def create_app(detector: PhotoDetector, examples: dict[str, bytes], max_upload_mb: float = 20,
               max_upload_megapixels: float = 40, score_threshold: float | None = None) -> FastAPI:
    """The FastAPI app around ``detector`` (one request runs the detector at a time); ``score_threshold``: what
    ``/predict`` keeps and where the page's slider starts when a request names none (None: everything)."""
    app = FastAPI(title="frcnn_lab", description="Faster R-CNN detections for photos")
    lock, default_threshold = threading.Lock(), score_threshold
    max_bytes, max_pixels = int(max_upload_mb * 2**20), int(max_upload_megapixels * 1e6)
    page = PAGE.replace("__COLORS__", str(list(CLASS_COLORS))).replace("__CLASSES__", str(detector.classes))

    @app.get("/", response_class=HTMLResponse)
    def index(score_threshold: Threshold = None) -> str:
        start = score_threshold if score_threshold is not None else default_threshold
        return page.replace("__THRESHOLD__", f"{start or 0.0:.2f}")

    @app.get("/examples")
    def example_names() -> list[str]:
        return list(examples)

    @app.get("/examples/{name}")
    def example(name: str) -> Response:
        if name not in examples:
            raise HTTPException(404, f"no example {name!r}; there are {list(examples)}")
        media = "image/png" if name.lower().endswith(".png") else "image/jpeg"
        return Response(examples[name], media_type=media)

    @app.post("/predict")
    def predict(file: UploadFile, score_threshold: Threshold = None) -> dict:  # sync: run in FastAPI's thread pool
        data = file.file.read(max_bytes + 1)
        pixels = read_upload(data, file.filename or "upload", max_bytes, max_pixels)
        with lock:
            detection = detector(pixels)
        threshold = score_threshold if score_threshold is not None else default_threshold
        if threshold is not None:
            kept = detection["scores"] >= threshold
            detection = {key: value[kept] for key, value in detection.items()}
        return {
            "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "classes": detector.classes,
            "score_threshold": threshold,
            "detections": [
                {"box": [round(v, 2) for v in box], "label": label, "class": detector.classes[label - 1],
                 "score": round(score, 4)}
                for box, label, score in zip(detection["boxes"].tolist(), detection["labels"].tolist(),
                                             detection["scores"].tolist(), strict=True)
            ],
        }

    return app


@hydra_main("serve")
def main(cfg: DictConfig) -> None:
    import uvicorn

    detector = configured_photo_detector(cfg)
    app = create_app(detector, example_images(cfg.examples), cfg.max_upload_mb, cfg.max_upload_megapixels,
                     cfg.score_threshold)
    print(f"frcnn_lab demo on http://{cfg.host}:{cfg.port}/ (JSON: POST /predict[?score_threshold=0.5] with a file "
          "field)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":
    main()
