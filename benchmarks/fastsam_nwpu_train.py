"""From-scratch yolov8n-seg on NWPU VHR-10 with its ground-truth classes: mask mAP50 per epoch (table + PNG).

    nice -n 10 .venv/bin/python benchmarks/fastsam_nwpu_train.py --epochs 14 --imgsz 320
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sam_distill.data.yolo import convert_coco
from sam_distill.methods.fastsam.recipe import plot_results, train_yolo

NWPU = Path(__file__).resolve().parents[2] / "shared" / "data" / "nwpu_vhr10"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=NWPU)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_fastsam_nwpu"))
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--png", type=Path, default=Path("docs/benchmarks/fastsam_nwpu_map.png"))
    args = parser.parse_args()

    started = time.time()
    summary = convert_coco(args.data / "annotations_train.json", args.data / "images", args.out / "yolo_data",
                           val_fraction=0.15)
    print(f"dataset: {summary['train_images']} train / {summary['val_images']} val images, "
          f"{summary['instances']} instances, dropped {summary['dropped']}")
    result = train_yolo(Path(summary["data_yaml"]), "yolov8n-seg", args.out / "yolo", epochs=args.epochs,
                        imgsz=args.imgsz, batch=args.batch, device="cpu", workers=1)
    plot_results(Path(result["run"]) / "results.csv", args.png)
    import csv

    with open(Path(result["run"]) / "results.csv", newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    print("| epoch | mask mAP50 | mask mAP50-95 | box mAP50 | seg loss (train) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {int(float(r['epoch']))} | {float(r['metrics/mAP50(M)']):.4f} | {float(r['metrics/mAP50-95(M)']):.4f} "
              f"| {float(r['metrics/mAP50(B)']):.4f} | {float(r['train/seg_loss']):.3f} |")
    print(f"wall time {time.time() - started:.0f} s; curve at {args.png}")


if __name__ == "__main__":
    main()
