"""Distillation training: decoupled (MobileSAM) and prompt-in-the-loop (EdgeSAM) stages.

Both stages share one loop: AdamW, linear warm-up then cosine decay, gradient accumulation,
AMP on CUDA, DDP under torchrun, and an atomic checkpoint every N optimiser steps from which
``resume`` continues the same schedule bit for bit (data order is a pure function of seed and epoch).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_torch_save
from sam_distill.core.rundir import MetricsWriter
from sam_distill.data.cache import DistillDataset

STATE_FORMAT = "sam-distill/train-state"
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    grad_accum: int
    lr: float
    min_lr: float
    weight_decay: float
    warmup_steps: int
    checkpoint_every: int
    log_every: int = 10
    max_steps: int | None = None
    amp: bool = True
    num_workers: int = 0

    @classmethod
    def from_config(cls, config) -> "Schedule":
        """From a config section (``train:`` or ``prompt_stage:``); keys a section lacks take neutral values."""
        return cls(
            epochs=config.epochs, batch_size=config.batch_size, grad_accum=getattr(config, "grad_accum", 1),
            lr=config.lr, min_lr=getattr(config, "min_lr", config.lr * 0.01),
            weight_decay=getattr(config, "weight_decay", 0.0), warmup_steps=getattr(config, "warmup_steps", 0),
            checkpoint_every=config.checkpoint_every, log_every=getattr(config, "log_every", 1),
            max_steps=config.max_steps, amp=getattr(config, "amp", True), num_workers=config.num_workers,
        )


class EpochSampler(Sampler[int]):
    """This rank's share of a seeded per-epoch permutation, starting ``skip`` samples in (for resume)."""

    def __init__(self, size: int, seed: int, epoch: int, rank: int, world_size: int, skip: int = 0):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(size, generator=generator).tolist()
        self.indices = order[rank::world_size][skip:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def steps_per_epoch(dataset_size: int, schedule: Schedule, world_size: int) -> int:
    per_rank = dataset_size // world_size  # the smallest rank's share: every rank runs the same steps
    steps = per_rank // (schedule.batch_size * schedule.grad_accum)
    if steps == 0:
        raise DistillError(
            f"only {dataset_size} training images for batch_size {schedule.batch_size} × grad_accum "
            f"{schedule.grad_accum} × {world_size} process(es); lower the batch size or add images"
        )
    return steps


def lr_lambda(schedule: Schedule, total_steps: int) -> Callable[[int], float]:
    floor = schedule.min_lr / schedule.lr

    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / (schedule.warmup_steps + 1)
        progress = (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Optimisation:
    """AdamW over the trainable parameters, warm-up + cosine, and AMP (CUDA only) for a whole schedule."""

    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype

    @classmethod
    def build(cls, model: nn.Module, schedule: Schedule, per_epoch: int, device: torch.device) -> "Optimisation":
        total_steps = per_epoch * schedule.epochs
        if schedule.max_steps:
            total_steps = min(total_steps, schedule.max_steps)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=schedule.lr, weight_decay=schedule.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps))
        use_amp = schedule.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(total_steps, optimizer, scheduler, scaler, use_amp, amp_dtype)

    def restore(self, state: dict) -> int:
        """Continue a saved schedule exactly: optimiser, scheduler, scaler and RNG; returns the step."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        return int(state["step"])


def embedding_mse(student: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MobileSAM's decoupled distillation loss."""
    return F.mse_loss(student(images).float(), targets)


def run_training(
    student: nn.Module,
    dataset: DistillDataset,
    schedule: Schedule,
    out_dir: Path,
    context: DistContext,
    loss_fn: LossFn = embedding_mse,
    seed: int = 0,
    resume: bool = True,
    log=print,
    meta: dict | None = None,
) -> dict:
    """Train ``student`` in place; checkpoints land in ``out_dir``. Returns a summary."""
    out_dir = Path(out_dir)
    device = context.device
    student.to(device)
    total_per_epoch = steps_per_epoch(len(dataset), schedule, context.world_size)
    opt = Optimisation.build(student, schedule, total_per_epoch, device)
    total_steps, optimizer, scheduler, scaler = opt.total_steps, opt.optimizer, opt.scheduler, opt.scaler
    use_amp, amp_dtype = opt.use_amp, opt.amp_dtype

    state_path = out_dir / "last.pt"
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise DistillError(f"{state_path} is not a training state of this toolkit; delete it to start over")
        student.load_state_dict(state["model"])
        step = opt.restore(state)
        log(f"train: resumed from {state_path} at step {step}/{total_steps}")

    model = student
    if context.distributed:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    metrics = MetricsWriter(out_dir / "metrics.csv", ["step", "epoch", "lr", "loss", "images_per_s", "seconds"],
                            resume_step=step, tensorboard_dir=out_dir / "tensorboard") if context.is_main else None

    def save_state() -> None:
        if not context.is_main:
            return
        atomic_torch_save(
            {"format": STATE_FORMAT, "step": step, "total_steps": total_steps,
             "model": student.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "rng": torch.get_rng_state(), "meta": meta or {}},
            state_path,
        )

    started = time.time()
    micro_per_step = schedule.grad_accum
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not context.is_main)
    running_loss, images_seen, window_start, logged_at = 0.0, 0, time.time(), step
    model.train()
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, total_per_epoch)
        sampler = EpochSampler(len(dataset), seed, epoch, context.rank, context.world_size,
                               skip=step_in_epoch * micro_per_step * schedule.batch_size)
        loader = DataLoader(dataset, batch_size=schedule.batch_size, sampler=sampler, drop_last=True,
                            num_workers=schedule.num_workers, pin_memory=device.type == "cuda")
        batches = iter(loader)
        for _ in range(step_in_epoch, total_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(micro_per_step):
                images, targets = next(batches)
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                sync = micro == micro_per_step - 1 or not context.distributed
                with model.no_sync() if not sync else nullcontext():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss = loss_fn(model, images, targets) / micro_per_step
                    scaler.scale(loss).backward()
                step_loss += loss.item()
                images_seen += images.shape[0] * context.world_size
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            running_loss += step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4g}")
            if step % schedule.log_every == 0 or step == total_steps:
                seconds = time.time() - window_start
                if metrics:
                    metrics.write({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                   "loss": running_loss / (step - logged_at),
                                   "images_per_s": images_seen / max(seconds, 1e-9),
                                   "seconds": time.time() - started})
                running_loss, images_seen, window_start, logged_at = 0.0, 0, time.time(), step
            if step % schedule.checkpoint_every == 0 or step == total_steps:
                save_state()
            if step >= total_steps:
                break
    bar.close()
    if metrics:
        metrics.close()
    context.barrier()
    return {"steps": step, "total_steps": total_steps, "seconds": round(time.time() - started, 2)}
