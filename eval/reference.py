"""Published figures for well-known heavy and light SAMs: QUOTED, NOT MEASURED HERE.

They let a user see where their own models sit, but they come from other hardware and other
protocols, so the report keeps them in their own table and never mixes them into speed-ups.
Every figure below was read from the cited page; FPS figures are converted to ms as 1000/FPS
(marked in ``note``). Figures that could not be verified from a primary source were left out:
EfficientSAM-Ti and FastSAM-s have no row for that reason.

Sources:
* MobileSAM README, https://github.com/ChaoningZhang/MobileSAM (paper arXiv:2306.14289): "on a single
  GPU" (GPU model not named), whole pipeline = image encoder + mask decoder, one image.
* EdgeSAM README "Performance" table, https://github.com/chongzhou96/EdgeSAM (paper arXiv:2312.06660):
  COCO mask AP with ViTDet-H box prompts, GFLOPs at 1024x1024, FPS of encoder + decoder with one prompt.
* FastSAM README "Results", https://github.com/CASIA-IVA-Lab/FastSAM (paper arXiv:2306.12156): one NVIDIA
  GeForce RTX 3090, running time with one point prompt; COCO 2017 instance segmentation AP.
"""
from __future__ import annotations

MOBILESAM = "MobileSAM README (github.com/ChaoningZhang/MobileSAM; arXiv:2306.14289)"
EDGESAM = "EdgeSAM README, Performance table (github.com/chongzhou96/EdgeSAM; arXiv:2312.06660)"
FASTSAM = "FastSAM README, Results (github.com/CASIA-IVA-Lab/FastSAM; arXiv:2306.12156)"

_ROWS = [
    # MobileSAM's own comparison, one GPU.
    {"model": "SAM ViT-H", "params": 615e6, "encoder_p50_ms": 452.0, "decoder_p50_ms": 4.0, "total_p50_ms": 456.0,
     "hardware": "a single GPU (model not stated)", "citation": MOBILESAM},
    {"model": "MobileSAM", "params": 9.66e6, "encoder_p50_ms": 8.0, "decoder_p50_ms": 4.0, "total_p50_ms": 12.0,
     "hardware": "a single GPU (model not stated)", "citation": MOBILESAM},
    # EdgeSAM's table: RTX 2080 Ti FPS, encoder + decoder with a single prompt.
    {"model": "SAM ViT-H", "params": 641.1e6, "gflops": 2734.8, "total_p50_ms": 1000 / 4.3, "mask_AP": 46.1,
     "hardware": "NVIDIA RTX 2080 Ti", "citation": EDGESAM, "note": "4.3 FPS; COCO mask AP, ViTDet-H boxes"},
    {"model": "MobileSAM", "params": 9.8e6, "gflops": 38.2, "total_p50_ms": 1000 / 103.5, "mask_AP": 39.4,
     "hardware": "NVIDIA RTX 2080 Ti", "citation": EDGESAM, "note": "103.5 FPS; COCO mask AP, ViTDet-H boxes"},
    {"model": "MobileSAM", "params": 9.8e6, "gflops": 38.2, "total_p50_ms": 1000 / 4.9, "mask_AP": 39.4,
     "hardware": "iPhone 14", "citation": EDGESAM, "note": "4.9 FPS; COCO mask AP, ViTDet-H boxes"},
    {"model": "EdgeSAM", "params": 9.6e6, "gflops": 22.1, "total_p50_ms": 1000 / 164.3, "mask_AP": 42.2,
     "hardware": "NVIDIA RTX 2080 Ti", "citation": EDGESAM, "note": "164.3 FPS; COCO mask AP, ViTDet-H boxes"},
    {"model": "EdgeSAM", "params": 9.6e6, "gflops": 22.1, "total_p50_ms": 1000 / 38.7, "mask_AP": 42.2,
     "hardware": "iPhone 14", "citation": EDGESAM, "note": "38.7 FPS; COCO mask AP, ViTDet-H boxes"},
    {"model": "FastSAM (YOLOv8x)", "params": 68.2e6, "gflops": 887.6, "mask_AP": 37.9,
     "hardware": "-", "citation": EDGESAM, "note": "COCO mask AP, ViTDet-H boxes; no FPS of its own in this table"},
    # FastSAM's table: RTX 3090, one point prompt.
    {"model": "SAM ViT-H", "params": 0.6e9, "total_p50_ms": 446.0, "mask_AP": 46.5,
     "hardware": "NVIDIA RTX 3090", "citation": FASTSAM, "note": "1 point prompt; COCO 2017 AP .465"},
    {"model": "SAM ViT-B", "params": 136e6, "total_p50_ms": 110.0,
     "hardware": "NVIDIA RTX 3090", "citation": FASTSAM, "note": "1 point prompt"},
    {"model": "FastSAM (YOLOv8x)", "params": 68e6, "total_p50_ms": 40.0, "mask_AP": 37.9,
     "hardware": "NVIDIA RTX 3090", "citation": FASTSAM, "note": "any prompt count; COCO 2017 AP .379"},
]


def reference_rows() -> list[dict]:
    """The quoted rows, each labelled ``source: quoted`` (copies: callers may annotate them)."""
    return [{**row, "kind": "published", "format": "-", "source": "quoted", "note": row.get("note", "")}
            for row in _ROWS]
