"""Every automatic instance method on the same encoder, data split, schedule and AP code.

RSPrompter (query and anchor prompters) and the paper's baselines SAM-det, SAM-seg and SAM-cls each run as a
full ``distill run`` of one config (default: configs/rsprompter_nwpu.yaml, NWPU VHR-10) with the recipe
switched and a reduced size/schedule. Then one ``distill report`` over all the run folders puts accuracy and
latency side by side (<out>/report/). Prints a markdown table and writes <out>/instance_methods.csv (rows kept
per method, so methods can run in separate calls).

    nice -n 10 .venv/bin/python benchmarks/instance_methods.py --steps 40 --image-size 256 \\
        --train-images 64 --val-images 16 --out runs/bench_instances_nwpu [--methods sam_seg sam_det]
    nice -n 10 .venv/bin/python benchmarks/instance_methods.py --config configs/sam_seg_quickstart.yaml \\
        --encoder vit_tiny --image-size 128 --steps 200 --set instances.synthetic.count=24 --out runs/bench_instances_shapes
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

# method → config overrides on top of the chosen config. SAM's decoder trains wherever a method
# prompts it, because the sandbox's SAM is random-initialised (with a pretrained SAM, leave it frozen).
METHODS = {
    "rsprompter_query": ["recipe=prompter", "prompter.head=query", "prompter.train_decoder=true"],
    "rsprompter_anchor": ["recipe=prompter", "prompter.head=anchor", "prompter.train_decoder=true"],
    "sam_det": ["recipe=sam_det", "sam_det.train_decoder=true"],
    "sam_seg": ["recipe=sam_seg"],
    # everything mode at 16² points (SAM's default 32² is 4× the decoder work); the MLP takes bigger batches
    "sam_cls": ["recipe=sam_cls", "sam_cls.everything.points_per_side=16", "train.batch_size=64"],
}


def read_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def write_rows(path: Path, rows: dict[str, dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows.values() for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[m] for m in METHODS if m in rows)


def latency(run_dir: Path) -> dict:
    """The run's own model row of the bench that ``distill run`` wrote at its end."""
    bench = json.loads((run_dir / "reports" / "bench.json").read_text())
    row = next((r for r in bench["rows"] if r.get("path") and "/model/" in r["path"]), {})
    return {"params_M": round(row.get("params", 0) / 1e6, 2), "encoder_ms": row.get("encoder_p50_ms"),
            "decoder_ms": row.get("decoder_p50_ms"), "total_ms": row.get("total_p50_ms")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/rsprompter_nwpu.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--encoder", default="tinyvit_5m")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_instances_nwpu"))
    args = parser.parse_args()

    import torch

    from sam_distill.eval.report import build_report
    from sam_distill.methods.config import load_config
    from sam_distill.runner import run

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "instance_methods.csv"
    rows = read_rows(table)
    for method in args.methods:
        name = f"{method}_{args.encoder}_{args.image_size}"
        overrides = METHODS[method] + [
            f"name={name}", f"run_dir={args.out / name}", f"encoder.name={args.encoder}",
            f"encoder.image_size={args.image_size}", f"train.max_steps={args.steps}",
            f"train.warmup_steps={args.steps // 10}", "train.lr=1.0e-3", "train.num_workers=0",
            f"train.checkpoint_every={args.steps}", f"instances.eval.every={args.steps // 2}",
            f"instances.max_train_images={args.train_images}", f"instances.max_val_images={args.val_images}",
            "instances.eval.overlays=2", *args.set]
        started = time.time()
        run_dir = run(load_config(args.config, overrides)).path
        ap = json.loads((run_dir / "reports" / "ap.json").read_text())
        rows[method] = {"method": method, "encoder": f"{args.encoder} (random init, frozen)", "steps": args.steps,
                        "wall_s": round(time.time() - started),
                        **{k: round(ap[k], 4) for k in ("mask_AP", "mask_AP50", "mask_AP75", "box_AP50")},
                        **latency(run_dir)}
        write_rows(table, rows)  # after every method: a killed benchmark keeps its rows
        print(f"method done: {rows[method]}", flush=True)
    build_report([args.out / f"{m}_{args.encoder}_{args.image_size}" for m in METHODS if m in rows],
                 args.out / "report")
    fields = list(next(iter(rows.values())))
    print("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields))
    for method in METHODS:
        if method in rows:
            print("| " + " | ".join(str(rows[method][k]) for k in fields) + " |")


if __name__ == "__main__":
    main()
