"""``distill demo``: a local page that segments one image with several models at once, side by side.

A small ASGI app (Starlette, served by uvicorn): the page is one static file with plain JavaScript and no
third-party assets, so it works offline; every model runs on the server (PyTorch or onnxruntime), because the
point is to time and compare the toolkit's own models on this machine, and the answer is one round trip.

    GET  /               the page
    POST /upload         an image (multipart field "file") → {"image", "width", "height"}; a bad one → 400 {"error"}
    POST /pick           {"name"}: one of the images ``--images`` offers, as if uploaded
    GET  /image/{id}     the uploaded image
    POST /segment        {"image", "points": [[x, y, 1|0]], "box": [x0, y0, x1, y1] | null, "mode": "prompt" |
                         "everything"} → per model an overlay PNG, times and a message; IoU between the models' masks
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from sam_distill.core.errors import DistillError

MAX_UPLOAD_BYTES = 20 * 2 ** 20
MAX_SIDE = 4096
PAGE = Path(__file__).with_name("page.html")
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def overlay_png(masks: list[np.ndarray], labels: list[str | None]) -> str:
    """The masks as one transparent PNG (data URL): filled at 45 % opacity, outlined opaque, one colour each
    (the class's colour when the mask has a class)."""
    from sam_distill.eval.gallery import class_colour, mask_outline

    height, width = masks[0].shape
    canvas = np.zeros((height, width, 4), np.uint8)
    for index, (mask, label) in enumerate(zip(masks, labels)):
        colour = class_colour(label) if label else PALETTE[index % len(PALETTE)]
        canvas[mask] = (*colour, 115)
        canvas[mask_outline(mask)] = (*colour, 255)
    buffer = io.BytesIO()
    Image.fromarray(canvas, "RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_upload(data: bytes, filename: str) -> np.ndarray:
    """The uploaded bytes as H×W×3 uint8, or one sentence saying why not."""
    from sam_distill.core.images import to_rgb8

    if not data:
        raise DistillError(f"{filename}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise DistillError(f"{filename}: {len(data) / 2 ** 20:.1f} MB is over the demo's {MAX_UPLOAD_BYTES // 2 ** 20} MB "
                           "limit; for whole scenes use `distill predict --tile`")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_SIDE:
                raise DistillError(f"{filename}: {image.size[0]}×{image.size[1]} px is over the demo's {MAX_SIDE} px "
                                   "limit; for whole scenes use `distill predict --tile`")
            image.load()
            return to_rgb8(np.asarray(image))
    except DistillError:
        raise
    except Exception as err:  # PIL raises many kinds for a file that is not an image
        raise DistillError(f"{filename} is not an image this demo reads (JPEG, PNG, TIFF, BMP, WebP): "
                           f"{type(err).__name__}") from None


class Demo:
    """The models, the uploaded images (kept in a temporary folder while the server runs) and the answers."""

    def __init__(self, models: list, folder: Path | None = None, samples: list[Path] | None = None):
        if not models:
            raise DistillError("distill demo needs at least one model")
        self.models = models
        self.samples = {path.name: path for path in samples or []}
        self.folder = Path(folder or tempfile.mkdtemp(prefix="distill-demo-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images: dict[str, np.ndarray] = {}

    def describe(self) -> dict:
        return {"models": [{"name": m.name, "kind": m.kind, "prompts": m.prompts} for m in self.models],
                "samples": sorted(self.samples)}

    def pick(self, name: str) -> dict:
        if name not in self.samples:
            raise DistillError(f"{name!r} is not one of the images this demo offers")
        return self.add_image(self.samples[name].read_bytes(), name)

    def add_image(self, data: bytes, filename: str) -> dict:
        image = read_upload(data, filename)
        image_id = hashlib.sha256(image.tobytes()).hexdigest()[:16]
        if image_id not in self.images:
            Image.fromarray(image).save(self.folder / f"{image_id}.png")
            self.images[image_id] = image
        return {"image": image_id, "width": int(image.shape[1]), "height": int(image.shape[0])}

    def image_path(self, image_id: str) -> Path:
        if image_id not in self.images:
            raise DistillError(f"image {image_id!r} is not on this server (upload it again)")
        return self.folder / f"{image_id}.png"

    def segment(self, request: dict) -> dict:
        image_id = str(request.get("image", ""))
        image = self.images.get(image_id)
        if image is None:
            raise DistillError("no image: upload one first")
        points = [(float(x), float(y), int(label)) for x, y, label in request.get("points") or []]
        box = [float(v) for v in request["box"]] if request.get("box") else None
        if box is not None and len(box) != 4:
            raise DistillError("a box is [x0, y0, x1, y1]")
        mode = request.get("mode", "prompt")
        if mode == "prompt" and not points and box is None:
            raise DistillError("click a point or drag a box first")
        answers, prompted = [], {}
        for index, model in enumerate(self.models):
            try:
                if not model.prompts:
                    result = model.automatic(image_id, self.image_path(image_id))
                    result = {**result, "message": "automatic result (prompts do not apply to this model)"}
                elif mode == "everything":
                    result = model.everything(image_id, image)
                else:
                    result = model.segment(image_id, image, points, box)
                    prompted[index] = result["masks"][0]
            except DistillError as err:
                result = {"message": str(err)}
            masks = result.get("masks") or []
            answers.append({"name": model.name, "kind": model.kind, "masks": len(masks),
                            "labels": [label for label in result.get("labels", []) if label],
                            "overlay": overlay_png(masks, result["labels"]) if masks else None,
                            "encode_ms": result.get("encode_ms"), "decode_ms": result.get("decode_ms"),
                            "message": result.get("message") or ("" if masks else "no mask")})
        from sam_distill.eval.fidelity import mask_iou

        names = [self.models[i].name for i in prompted]
        iou = [[round(mask_iou(prompted[i], prompted[j]), 4) for j in prompted] for i in prompted]
        return {"models": answers, "iou": {"models": names, "matrix": iou}}


def create_app(demo: Demo):
    """The Starlette app of a :class:`Demo`: every failure is a JSON message for the page, never a dead server."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = PAGE.read_text().replace("/*DEMO*/{}", json.dumps(demo.describe()))

    async def index(request: Request):
        return HTMLResponse(page)

    async def upload(request: Request):
        try:
            length = int(request.headers.get("content-length") or 0)
            if length > MAX_UPLOAD_BYTES + 2 ** 16:
                raise DistillError(f"the upload is {length / 2 ** 20:.1f} MB, over the demo's "
                                   f"{MAX_UPLOAD_BYTES // 2 ** 20} MB limit")
            form = await request.form(max_files=1, max_fields=4)
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise DistillError("send the image as the multipart field 'file'")
            return JSONResponse(demo.add_image(await file.read(), file.filename or "upload"))
        except DistillError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except Exception as err:  # a malformed request body
            return JSONResponse({"error": f"the upload could not be read ({type(err).__name__})"}, status_code=400)

    async def pick(request: Request):
        try:
            body = await request.json()
            return JSONResponse(demo.pick(str(body.get("name", "")) if isinstance(body, dict) else ""))
        except DistillError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except ValueError:
            return JSONResponse({"error": "send a JSON object {\"name\": ...}"}, status_code=400)

    async def image(request: Request):
        try:
            return FileResponse(demo.image_path(request.path_params["image_id"]), media_type="image/png")
        except DistillError as err:
            return JSONResponse({"error": str(err)}, status_code=404)

    async def segment(request: Request):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise DistillError("send a JSON object")
            return JSONResponse(demo.segment(body))
        except DistillError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except (ValueError, TypeError, KeyError) as err:
            return JSONResponse({"error": f"a malformed request ({type(err).__name__}: {err})"}, status_code=400)
        except Exception as err:  # a model failing on this input: say so on the page, keep serving
            return JSONResponse({"error": f"segmentation failed: {type(err).__name__}: {err}"}, status_code=500)

    return Starlette(routes=[Route("/", index), Route("/upload", upload, methods=["POST"]),
                             Route("/pick", pick, methods=["POST"]),
                             Route("/image/{image_id}", image), Route("/segment", segment, methods=["POST"])])
