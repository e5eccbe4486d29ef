"""Published figures for well-known heavy and light SAMs: QUOTED, NOT MEASURED HERE.

They let a user see where their own models sit, but they come from other hardware and other
protocols, so the report keeps them in their own table and never mixes them into speed-ups.
Every figure below was read from the cited page; FPS figures are converted to ms as 1000/FPS
(marked in ``note``). Figures that could not be verified from a primary source were left out:
EfficientSAM-Ti's params, GFLOPs and COCO AP (the EfficientSAM and EdgeSAM paper tables were not
retrievable here; the EfficientSAM README lists none), so its row carries latency only.

Sources:
* MobileSAM README, https://github.com/ChaoningZhang/MobileSAM (paper arXiv:2306.14289): "on a single
  GPU" (GPU model not named), whole pipeline = image encoder + mask decoder, one image.
* EdgeSAM README "Performance" table, https://github.com/chongzhou96/EdgeSAM (paper arXiv:2312.06660):
  COCO mask AP with ViTDet-H box prompts, GFLOPs at 1024x1024, FPS of encoder + decoder with one prompt.
* FastSAM README "Results", https://github.com/CASIA-IVA-Lab/FastSAM (paper arXiv:2306.12156): one NVIDIA
  GeForce RTX 3090, running time with one point prompt; COCO 2017 instance segmentation AP.
* Ultralytics docs, "Segment Anything Model (SAM)" page, table "SAM comparison vs YOLOv8",
  https://docs.ultralytics.com/models/sam/ (read from docs/en/models/sam.md at ultralytics commit 6416b4e7):
  "Tests run on a 2023 Apple M2 Macbook with 16GB of RAM"; speed is CPU ms per image of ``model(ASSETS)``
  with no prompt, i.e. segment-everything mode for every model in that table.
* D-Robotics RDK X5 documentation, "Promptable Segmentation" performance table (the vendor's own
  measurement with ``hrt_model_exec perf``, 200 frames, encoder and decoder binaries timed separately;
  models from github.com/D-Robotics/rdk_model_zoo, samples/vision/efficient_sam and mobile_sam): an edge
  board, single-thread average latency quoted (the 8-thread rows measure throughput).
"""
from __future__ import annotations

MOBILESAM = "MobileSAM README (github.com/ChaoningZhang/MobileSAM; arXiv:2306.14289)"
EDGESAM = "EdgeSAM README, Performance table (github.com/chongzhou96/EdgeSAM; arXiv:2312.06660)"
FASTSAM = "FastSAM README, Results (github.com/CASIA-IVA-Lab/FastSAM; arXiv:2306.12156)"
RDK_X5 = ("D-Robotics RDK X5 docs, 'Promptable Segmentation' table (hrt_model_exec perf; "
          "github.com/D-Robotics/rdk_model_zoo samples/vision/efficient_sam, mobile_sam)")
ULTRALYTICS = ("Ultralytics docs, SAM page, table 'SAM comparison vs YOLOv8' (docs.ultralytics.com/models/sam/; "
               "docs/en/models/sam.md @ ultralytics 6416b4e7)")

_ROWS = [
    # D-Robotics' table: RDK X5 edge board, 1 thread, encoder and decoder timed separately.
    {"model": "EfficientSAM-Ti", "encoder_p50_ms": 1451.073, "decoder_p50_ms": 86.532,
     "total_p50_ms": 1451.073 + 86.532, "hardware": "D-Robotics RDK X5 (edge board), 1 thread", "citation": RDK_X5,
     "note": "average latency; total = encoder + decoder rows"},
    {"model": "MobileSAM", "encoder_p50_ms": 1402.542, "decoder_p50_ms": 96.198,
     "total_p50_ms": 1402.542 + 96.198, "hardware": "D-Robotics RDK X5 (edge board), 1 thread", "citation": RDK_X5,
     "note": "average latency; total = encoder + decoder rows"},
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
    # Ultralytics' own CPU comparison: segment everything (no prompt), so far slower than one-prompt figures.
    {"model": "SAM ViT-B", "params": 94.7e6, "total_p50_ms": 51096.0,
     "hardware": "Apple M2 MacBook CPU, 16 GB", "citation": ULTRALYTICS,
     "note": "segment everything, no prompt; 358 MB file"},
    {"model": "MobileSAM", "params": 10.1e6, "total_p50_ms": 46122.0,
     "hardware": "Apple M2 MacBook CPU, 16 GB", "citation": ULTRALYTICS,
     "note": "segment everything, no prompt; 40.7 MB file"},
    {"model": "FastSAM-s (YOLOv8s)", "params": 11.8e6, "total_p50_ms": 115.0,
     "hardware": "Apple M2 MacBook CPU, 16 GB", "citation": ULTRALYTICS,
     "note": "segment everything, no prompt; 23.7 MB file; FastSAM README gives COCO AP for YOLOv8x only"},
]


def reference_rows() -> list[dict]:
    """The quoted rows, each labelled ``source: quoted`` (copies: callers may annotate them)."""
    return [{**row, "kind": "published", "format": "-", "source": "quoted", "note": row.get("note", "")}
            for row in _ROWS]
