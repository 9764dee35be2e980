"""frcnn_lab.serve: the CLI's server on 127.0.0.1, asked by an HTTP client and by headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.photos import PhotoDetector
from frcnn_lab.inference.drawing import CLASS_COLORS
from frcnn_lab.serve import example_images
from support import free_port, stop, wait_for_server

CHROMEDRIVER = shutil.which("chromedriver")



@pytest.fixture(scope="module")
def server(initialised_checkpoint, tmp_path_factory):
    """``python -m frcnn_lab.serve`` on a free port -> its base URL; stopped when the module's tests are done."""
    port = free_port()
    cwd = tmp_path_factory.mktemp("serve")
    process = subprocess.Popen(
        [sys.executable, "-m", "frcnn_lab.serve", f"ckpt_path={initialised_checkpoint}", f"port={port}",
         "max_upload_mb=1", "max_upload_megapixels=1"], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(process, url + "examples")
        yield url
    finally:
        stop(process)


def test_predict_answers_the_checkpoints_detections(server, initialised_checkpoint):
    names = httpx.get(server + "examples", timeout=10).json()
    assert names == list(example_images(None))
    png = httpx.get(server + f"examples/{names[0]}", timeout=10).content
    answer = httpx.post(server + "predict", files={"file": (names[0], png, "image/png")}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert (body["height"], body["width"]) == pixels.shape[:2]

    module = load_module(initialised_checkpoint, torch.device("cpu"))
    expected = PhotoDetector(module)(pixels)
    detections = body["detections"]
    assert len(detections) == len(expected["boxes"]) > 0
    for got, box, label, score in zip(detections, expected["boxes"].tolist(), expected["labels"].tolist(),
                                      expected["scores"].tolist(), strict=True):
        assert got["label"] == label and got["class"] == module.classes[label - 1]
        assert got["score"] == pytest.approx(score, abs=1e-4) and np.allclose(got["box"], box, atol=0.006)


def test_the_score_threshold_filters_predict_and_starts_the_slider(initialised_checkpoint):
    """``POST /predict?score_threshold=T`` keeps the detections scoring at least T (the serve key as its default;
    neither: everything the model keeps); ``GET /?score_threshold=T`` starts the page's slider at T."""
    from fastapi.testclient import TestClient

    from frcnn_lab.serve import create_app

    module = load_module(initialised_checkpoint, torch.device("cpu"))
    detector = PhotoDetector(module)
    png = example_images(None)["scene0.png"]
    upload = {"file": ("scene0.png", png, "image/png")}
    client = TestClient(create_app(detector, {}))
    everything = client.post("/predict", files=upload).json()
    scores = [d["score"] for d in everything["detections"]]
    assert everything["score_threshold"] is None and len(scores) > 2 and scores == sorted(scores, reverse=True)
    # In the widest gap between two scores (the answer's are rounded to 4 decimals): the best k detections pass.
    k = max(range(1, len(scores)), key=lambda k: scores[k - 1] - scores[k])
    assert scores[k - 1] - scores[k] > 2e-4, scores
    threshold = (scores[k - 1] + scores[k]) / 2
    expected = everything["detections"][:k]
    asked = client.post(f"/predict?score_threshold={threshold}", files=upload).json()
    assert asked["detections"] == expected and asked["score_threshold"] == threshold
    assert client.post("/predict?score_threshold=1.5", files=upload).status_code == 422
    assert 'value="0.00"' in client.get("/").text and 'value="0.30"' in client.get("/?score_threshold=0.3").text

    configured = TestClient(create_app(detector, {}, score_threshold=threshold))
    assert configured.post("/predict", files=upload).json()["detections"] == expected
    assert configured.post("/predict?score_threshold=0", files=upload).json()["detections"] == \
        everything["detections"]  # what the page asks for: every detection, filtered by its slider
    assert f'value="{threshold:.2f}"' in configured.get("/").text


def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(server):
    png = httpx.get(server + "examples/scene0.png", timeout=10).content
    bad = [
        (("empty.png", b"", "image/png"), 400, "empty upload"),
        (("notes.txt", b"just some text", "text/plain"), 400, "not a readable image"),
        (("cut.png", png[: len(png) // 2], "image/png"), 400, "corrupt or truncated"),
        (("huge.png", os.urandom(1_200_000), "image/png"), 413, "larger than the limit of 1 MB"),
        (("wide.png", png_bytes(np.zeros((800, 1500, 3), np.uint8)), "image/png"), 413,
         "1500x800 pixels, more than the limit of 1 megapixels"),
    ]
    for upload, status, message in bad:
        answer = httpx.post(server + "predict", files={"file": upload}, timeout=60)
        assert answer.status_code == status and message in answer.json()["detail"], (upload[0], answer.text)
        assert upload[0] in answer.json()["detail"]
    assert httpx.post(server + "predict", data={"other": "field"}, timeout=60).status_code == 422
    assert httpx.get(server + "examples/missing.png", timeout=10).status_code == 404
    answer = httpx.post(server + "predict", files={"file": ("scene0.png", png, "image/png")}, timeout=120)
    assert answer.status_code == 200 and answer.json()["detections"]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def box_pixels(screenshot: bytes) -> int:
    """Pixels of the screenshot in the class colours of the boxes (red, dodger blue)."""
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
    colours = [np.array(c) for c in ((255, 0, 0), (30, 144, 255))]
    assert CLASS_COLORS[:2] == ("red", "dodgerblue")
    return int(sum((np.abs(pixels - c).sum(axis=-1) <= 30).sum() for c in colours))


@pytest.mark.skipif(CHROMEDRIVER is None and not os.environ.get("CI"),
                    reason="chromium-driver is not installed (scripts/setup.sh installs it; with CI set this fails)")
def test_the_page_draws_boxes_in_headless_chromium(server, tmp_path):
    assert CHROMEDRIVER, "chromedriver is not on PATH: scripts/setup.sh installs chromium and chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or options.binary_location
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,760"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example option")) > 1)
        Select(driver.find_element(By.ID, "example")).select_by_value("scene0.png")
        wait.until(lambda d: "detections with score" in d.find_element(By.ID, "status").text)

        def show(threshold: float) -> bytes:
            driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", threshold)
            return driver.get_screenshot_as_png()

        none_drawn = show(1.0)
        assert driver.find_element(By.ID, "status").text.startswith("0 of ")
        scores = sorted(driver.execute_script("return result.detections.map(d => d.score)"), reverse=True)
        threshold = np.floor(scores[min(5, len(scores) - 1)] * 100) / 100  # the best few boxes
        drawn = show(threshold)
        kept = sum(s >= threshold for s in scores)
        assert driver.find_element(By.ID, "status").text.startswith(f"{kept} of {len(scores)} detections")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#detections li")) == kept
        (tmp_path / "serve_demo.png").write_bytes(drawn)
        assert box_pixels(drawn) > box_pixels(none_drawn) + 100 * kept

        # An upload through the file input, and a bad one that the page reports.
        photo = tmp_path / "upload.png"
        photo.write_bytes(httpx.get(server + "examples/scene1.png", timeout=10).content)
        driver.execute_script("document.getElementById('status').textContent = 'uploading'")
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: "detections with score" in d.find_element(By.ID, "status").text)
        notes = tmp_path / "notes.png"
        notes.write_text("not a picture")
        driver.find_element(By.ID, "file").send_keys(str(notes))
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("error 400"))
    finally:
        driver.quit()
