"""How much bf16 autocast (and channels-last) speeds up a ConvNet encoder's training step on this CPU.

A timm ResNet-34 (the NWPU chain's teacher encoder, features to stride 16) at 512 px, batch 4: forward + backward
three times in each mode (fp32, bf16, fp32 channels-last, bf16 channels-last); the first call of each mode pays
oneDNN's set-up. On a CPU without native bf16 (no AMX or AVX512-BF16) the bf16 rows are emulated and slow.

    python benchmarks/cpu_bf16_speed.py [--threads 2] [--size 512] [--batch 4]

Figures: docs/CHAIN.md (stage a).
"""
from __future__ import annotations

import argparse
import time

import timm
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sam_distill.train.loop import cpu_computes_bf16

    print(f"native bf16 on this CPU: {cpu_computes_bf16()}")
    model = timm.create_model("resnet34", features_only=True, out_indices=(3,))
    images = torch.randn(args.batch, 3, args.size, args.size)
    for mode in ("fp32", "bf16", "fp32 channels-last", "bf16 channels-last"):
        net, x = model, images
        if mode.endswith("channels-last"):
            net, x = model.to(memory_format=torch.channels_last), images.to(memory_format=torch.channels_last)
        seconds = []
        for _ in range(3):
            started = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
                output = net(x)[0]
            output.float().mean().backward()
            seconds.append(round(time.time() - started, 2))
        print(f"{mode}: forward + backward {seconds} s")


if __name__ == "__main__":
    main()
