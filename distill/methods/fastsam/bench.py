"""The yolo_seg kind's bench entry: the network's forward at its image size is the whole automatic pipeline, timed
as the encoder phase (there is no prompt decoder). Ultralytics ``.pt`` files are pickled classes: loaded by
ultralytics itself, the one exception to ``weights_only`` loading."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.eval.bench import ROLE_STUDENT, BenchModel
from sam_distill.methods.fastsam.recipe import offline

offline()
from ultralytics import YOLO  # noqa: E402  (after offline(): ultralytics reads YOLO_OFFLINE at import)


def bench_yolo(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    yolo = YOLO(str(path))
    net = yolo.model.to(device).eval()
    args = getattr(net, "args", None)
    size = int(args.get("imgsz", 640)) if isinstance(args, dict) else 640
    pixels = torch.rand(1, 3, size, size, device=device)

    @torch.inference_mode()
    def forward():
        return net(pixels)

    return BenchModel(name=f"{path.stem} ({path.name})", kind="ultralytics", format="pytorch", role=ROLE_STUDENT,
                      path=path, params=sum(p.numel() for p in net.parameters()), image_size=size, encoder=forward,
                      notes=[f"ultralytics {yolo.task} network forward at {size} px (no NMS/post-processing)"])
