"""Is the embedding cache a bottleneck? Cache read throughput (embeddings/s, fp16 shards via memmap, and
with image decoding + preprocessing as training does) against tinyvit_5m training-step throughput at 1024.

    python benchmarks/cache_throughput.py CACHE_DIR [--batch-size 4] [--steps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from sam_distill.data.cache import DistillDataset, EmbeddingCache
from sam_distill.students import create_student
from sam_distill.train.loop import embedding_mse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = EmbeddingCache(args.cache)
    n = len(cache)

    start = time.perf_counter()
    for i in range(n):
        cache.embedding(i)
    embeddings_per_s = n / (time.perf_counter() - start)

    dataset = DistillDataset(cache)
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    pairs_per_s = n / (time.perf_counter() - start)

    student = create_student("tinyvit_5m", image_size=cache.image_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    loader = iter(DataLoader(dataset, batch_size=args.batch_size, shuffle=True))
    batches = [next(loader) for _ in range(args.steps + 1)]
    times = []
    for step, (images, targets) in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad()
        embedding_mse(student, images, targets).backward()
        optimizer.step()
        if step:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    train_images_per_s = args.batch_size / (sum(times) / len(times))
    print(f"cache: {n} embeddings of {cache.identity['embedding_shape']} fp16")
    print(f"cache read (embedding only):            {embeddings_per_s:9.1f} embeddings/s")
    print(f"cache read + image decode + preprocess: {pairs_per_s:9.1f} pairs/s (one worker)")
    print(f"tinyvit_5m training step (batch {args.batch_size}):     {train_images_per_s:9.2f} images/s")
    print(f"loading is {pairs_per_s / train_images_per_s:.0f}x faster than training consumes")


if __name__ == "__main__":
    main()
