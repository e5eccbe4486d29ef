"""NWPU VHR-10 benchmark of both prompters on RANDOM-INITIALISED encoders (no pretrained weights exist here).

Runs configs/rsprompter_nwpu.yaml at a reduced size and schedule for each (head, encoder, frozen/joint) case,
then prints a markdown table and writes runs/bench_prompter_nwpu/prompter_nwpu.csv and an AP-curve figure.

    nice -n 10 .venv/bin/python benchmarks/prompter_nwpu.py [--steps 40] [--image-size 512]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

CASES = [  # (head, encoder, train_encoder)
    ("query", "tinyvit_5m", False), ("anchor", "tinyvit_5m", False),
    ("query", "vit_b", False), ("anchor", "vit_b", False),
    ("query", "tinyvit_5m", True), ("anchor", "tinyvit_5m", True),
]


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--train-images", type=int, default=80)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_prompter_nwpu"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from sam_distill.core.rundir import read_metrics
    from sam_distill.methods.config import load_config
    from sam_distill.runner import run

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    plt.figure(figsize=(7, 4.5))
    for head, encoder, joint in CASES:
        name = f"prompter_nwpu_{head}_{encoder}_{'joint' if joint else 'frozen'}_{args.image_size}"
        overrides = [f"name={name}", f"run_dir={args.out / name}", f"prompter.head={head}",
                     f"encoder.name={encoder}", f"encoder.image_size={args.image_size}",
                     f"encoder.train={str(joint).lower()}", f"train.max_steps={args.steps}",
                     f"train.warmup_steps={args.steps // 10}", "train.lr=1.0e-3", "train.num_workers=0",
                     f"train.checkpoint_every={args.steps}", f"instances.eval.every={args.steps // 2}",
                     f"instances.max_train_images={args.train_images}",
                     f"instances.max_val_images={args.val_images}", "instances.eval.overlays=2"]
        started = time.time()
        run_dir = run(load_config("configs/rsprompter_nwpu.yaml", overrides))
        seconds = time.time() - started
        ap = json.loads((run_dir.path / "reports" / "ap.json").read_text())
        rows.append({"head": head, "encoder": f"{encoder} (random init)", "encoder_trained": joint,
                     "steps": args.steps, "seconds": round(seconds), **{k: round(ap[k], 4) for k in
                     ("mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "box_AP75")}})
        curve = read_metrics(run_dir.path / "checkpoints" / "prompter" / "ap.csv")
        plt.plot([r["step"] for r in curve], [r["mask_AP50"] for r in curve], marker="o",
                 label=f"{head} / {encoder} / {'joint' if joint else 'frozen'}")
        write_csv(args.out / "prompter_nwpu.csv", rows)  # after every case: a killed benchmark keeps its rows
        print(f"case done: {rows[-1]}", flush=True)
    plt.xlabel("step")
    plt.ylabel("val mask AP50")
    plt.title(f"NWPU VHR-10, {args.image_size} px, random-init encoders", fontsize=9)
    plt.legend(fontsize=7)
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(args.out / "prompter_nwpu_ap50.png", dpi=100)
    print("| head | encoder | encoder trained | steps | s | mask AP | AP50 | AP75 | box AP | AP50 | AP75 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['head']} | {r['encoder']} | {r['encoder_trained']} | {r['steps']} | {r['seconds']} | "
              f"{r['mask_AP']:.4f} | {r['mask_AP50']:.4f} | {r['mask_AP75']:.4f} | {r['box_AP']:.4f} | "
              f"{r['box_AP50']:.4f} | {r['box_AP75']:.4f} |")


if __name__ == "__main__":
    main()
