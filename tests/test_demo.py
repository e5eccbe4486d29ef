"""``distill demo``: the server answers an upload and a prompt with every model's mask (an encoder runs once per
image), an instance model's automatic result, bad uploads as messages; and a real browser (headless Chromium,
driven over the DevTools protocol) uploads an image, clicks a point and sees two masks drawn."""
from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from sam_distill.eval.fidelity import mask_iou  # noqa: E402
from sam_distill.serve.app import Demo, create_app  # noqa: E402
from sam_distill.serve.models import open_model  # noqa: E402


def png_bytes(size=(96, 64)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 80, (size[1], size[0], 3)).astype(np.uint8)
    pixels[20:44, 30:70] = (220, 60, 60)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_sams(tmp_path_factory):
    """Two different random SAMs of the real architecture, as model.pt files (a 'heavy' and a 'light' one)."""
    from sam_distill.sam.build import build_sam
    from sam_distill.sam.model_file import save_model

    folder = tmp_path_factory.mktemp("demo_models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_model(build_sam("vit_tiny", 128), folder / f"sam{seed}.pt", "vit_tiny"))
    return paths


def test_upload_prompt_and_the_embedding_kept(two_sams, tmp_path):
    demo = Demo([open_model(path, torch.device("cpu")) for path in two_sams], tmp_path)
    client = TestClient(create_app(demo))
    page = client.get("/").text
    assert "sam0.pt (vit_tiny)" in page and "/*DEMO*/" not in page
    uploaded = client.post("/upload", files={"file": ("scene.png", png_bytes(), "image/png")}).json()
    assert (uploaded["width"], uploaded["height"]) == (96, 64)
    assert client.get(f"/image/{uploaded['image']}").content[:8] == b"\x89PNG\r\n\x1a\n"
    first = client.post("/segment", json={"image": uploaded["image"], "points": [[50, 30, 1]]}).json()
    assert [m["masks"] for m in first["models"]] == [1, 1]
    assert all(m["encode_ms"] > 0 and m["decode_ms"] > 0 for m in first["models"])
    overlay = Image.open(io.BytesIO(base64.b64decode(first["models"][0]["overlay"].split(",")[1])))
    assert overlay.size == (96, 64) and overlay.mode == "RGBA"
    matrix = first["iou"]["matrix"]
    assert matrix[0][0] == matrix[1][1] == 1.0 and matrix[0][1] == matrix[1][0]
    # The pairwise IoU is the IoU of the masks each model gives for that prompt, computed here again.
    masks = [model.segment(uploaded["image"], demo.images[uploaded["image"]], [(50, 30, 1)], None)["masks"][0]
             for model in demo.models]
    assert matrix[0][1] == round(mask_iou(*masks), 4)
    again = client.post("/segment", json={"image": uploaded["image"], "points": [[50, 30, 1], [10, 10, 0]],
                                          "box": [30, 20, 70, 44]}).json()
    assert all(m["encode_ms"] is None for m in again["models"])  # each image is encoded once per model


def test_an_onnx_export_folder_answers_like_its_model(two_sams, tmp_path):
    """A `distill export` folder (encoder.onnx + decoder.onnx) is a promptable model of the page, run by onnxruntime:
    its mask matches the PyTorch model's; everything mode says it needs the PyTorch file."""
    pytest.importorskip("onnxruntime")
    from sam_distill.export.onnx_export import export_decoder, export_encoder
    from sam_distill.sam.model_file import load_model

    sam, _ = load_model(two_sams[0])
    folder = tmp_path / "onnx"
    folder.mkdir()
    export_encoder(sam, folder / "encoder.onnx", 17)
    export_decoder(sam, folder / "decoder.onnx", 17)
    demo = Demo([open_model(two_sams[0], torch.device("cpu")), open_model(folder, torch.device("cpu"))], tmp_path / "s")
    client = TestClient(create_app(demo))
    uploaded = client.post("/upload", files={"file": ("a.png", png_bytes(), "image/png")}).json()
    answer = client.post("/segment", json={"image": uploaded["image"], "box": [30, 20, 70, 44]}).json()
    assert answer["models"][1]["kind"] == "onnx" and answer["models"][1]["masks"] == 1
    assert answer["iou"]["matrix"][0][1] > 0.95
    everything = client.post("/segment", json={"image": uploaded["image"], "mode": "everything"}).json()
    assert "PyTorch SAM files" in everything["models"][1]["message"]


def test_bad_input_is_a_message_and_the_server_keeps_serving(two_sams, tmp_path):
    client = TestClient(create_app(Demo([open_model(two_sams[0], torch.device("cpu"))], tmp_path)))
    bad = client.post("/upload", files={"file": ("notes.txt", b"not an image", "text/plain")})
    assert bad.status_code == 400 and "notes.txt is not an image this demo reads" in bad.json()["error"]
    empty = client.post("/upload", files={"file": ("empty.png", b"", "image/png")})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert client.post("/segment", json={"image": "nope", "points": [[1, 1, 1]]}).json()["error"].startswith("no image")
    uploaded = client.post("/upload", files={"file": ("a.png", png_bytes(), "image/png")}).json()
    assert "click a point" in client.post("/segment", json={"image": uploaded["image"]}).json()["error"]
    assert client.post("/segment", content=b"{not json").status_code == 400
    assert client.post("/segment", json={"image": uploaded["image"], "points": [[5, 5, 1]]}).status_code == 200


def test_pick_one_of_the_offered_images(two_sams, tmp_path):
    """`distill demo --images DIR` offers that folder's images; picking one is the same as uploading it."""
    sample = tmp_path / "harbour.png"
    sample.write_bytes(png_bytes())
    client = TestClient(create_app(Demo([open_model(two_sams[0], torch.device("cpu"))], tmp_path / "s", [sample])))
    assert '"samples": ["harbour.png"]' in client.get("/").text
    picked = client.post("/pick", json={"name": "harbour.png"}).json()
    uploaded = client.post("/upload", files={"file": ("x.png", png_bytes(), "image/png")}).json()
    assert picked == uploaded and (picked["width"], picked["height"]) == (96, 64)
    refused = client.post("/pick", json={"name": "../secret.png"})
    assert refused.status_code == 400 and "not one of the images" in refused.json()["error"]


def test_an_instance_model_shows_its_automatic_result(two_sams, tmp_path):
    from sam_distill.methods.prompter.model import build_prompter, save_prompter

    torch.manual_seed(0)
    model = build_prompter({"encoder": "vit_tiny", "image_size": 128, "head": "query", "num_classes": 1, "width": 32,
                            "head_kwargs": {"num_queries": 4, "decoder_layers": 2, "pixel_decoder_layers": 1, "heads": 4}})
    prompter = save_prompter(model, tmp_path / "prompter.pt", [{"id": 1, "name": "box"}])
    demo = Demo([open_model(two_sams[0], torch.device("cpu")), open_model(prompter, torch.device("cpu"))], tmp_path)
    client = TestClient(create_app(demo))
    uploaded = client.post("/upload", files={"file": ("a.png", png_bytes(), "image/png")}).json()
    answer = client.post("/segment", json={"image": uploaded["image"], "points": [[50, 30, 1]]}).json()
    automatic = answer["models"][1]
    assert automatic["kind"] == "prompter" and "automatic result" in automatic["message"]
    assert answer["iou"]["models"] == [demo.models[0].name]  # only promptable models are compared


ROOT = Path(__file__).resolve().parents[1]


def _chromium():
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary installed (apt-get install chromium)")
def test_in_a_real_browser_a_click_draws_both_models_masks(two_sams, tmp_path):
    """benchmarks/demo_in_browser.py drives headless Chromium over the DevTools protocol: upload, click, wait."""
    pytest.importorskip("websocket")
    import uvicorn

    demo = Demo([open_model(path, torch.device("cpu")) for path in two_sams], tmp_path / "store")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(demo), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    image, shot = tmp_path / "upload.png", tmp_path / "demo.png"
    image.write_bytes(png_bytes((480, 320)))
    try:
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_in_browser.py"), "--url",
                               f"http://127.0.0.1:{port}/", "--image", str(image), "--screenshot", str(shot)],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["masksDrawn"] == state["panels"] == 2 and state["error"] is None and state["iouCells"] == 4
    assert all("1 mask(s)" in line and "encoder" in line for line in state["stats"])
    assert Image.open(shot).size[0] > 0
