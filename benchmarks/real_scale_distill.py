"""Real-scale MobileSAM-recipe run on NWPU VHR-10: vit_b-architecture teacher (random weights), tinyvit_5m
student at 1024 px, 100 images. Prints stage timings, the loss curve and the fidelity table, and draws the
curve to docs/img/nwpu_distill_loss.png. Resumable: rerun after a kill and it continues.

    python benchmarks/real_scale_distill.py [--config configs/nwpu_benchmark.yaml]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sam_distill.core.rundir import read_metrics  # noqa: E402
from sam_distill.eval.fidelity import format_table  # noqa: E402
from sam_distill.methods.config import load_config  # noqa: E402
from sam_distill.runner import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/nwpu_benchmark.yaml")
    parser.add_argument("--plot", default="docs/img/nwpu_distill_loss.png")
    args = parser.parse_args()
    config = load_config(args.config)
    started = time.time()
    run_dir = run(config).path
    rows = read_metrics(run_dir / "checkpoints" / "distill" / "metrics.csv")
    print(f"\nwall time of this invocation: {time.time() - started:.0f} s")
    print("step  epoch  lr         loss      images/s")
    for row in rows:
        print(f"{int(row['step']):4d}  {int(row['epoch']):5d}  {row['lr']:.2e}  {row['loss']:.5f}  {row['images_per_s']:.2f}")
    fidelity = json.loads((run_dir / "reports" / "fidelity.json").read_text())
    print()
    print(format_table(fidelity, "fidelity (RANDOM-INITIALISED vit_b teacher)"))
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", markersize=3)
    ax.set_xlabel("optimiser step (batch 4)")
    ax.set_ylabel("embedding MSE")
    ax.set_title("tinyvit_5m from a random-init SAM vit_b, 100 NWPU images")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"loss curve: {args.plot}")


if __name__ == "__main__":
    main()
