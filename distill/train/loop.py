"""The one training loop of every method, and the objectives that say what each method trains.

An :class:`Objective` (after timm's ``TrainingTask`` and ultralytics' base trainer) names the module to optimise,
how a batch is collated, and ``losses(model, batch)``: a dict of loss terms that the loop sums. Everything else is
written here once and holds for every method: AdamW with linear warm-up then cosine decay, gradient accumulation,
AMP on CUDA, DDP under torchrun, metrics.csv (+ TensorBoard) with every term, a progress bar, an optional
evaluation every N steps on rank 0, and an atomic ``last.pt`` every N optimiser steps from which a rerun continues
bit for bit: data order and each sample's augmentation are pure functions of seed, epoch and index, and the
state carries every rank's random generators (torch's, CUDA's and the objective's own) and the metrics window
that was half summed.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_torch_save
from sam_distill.core.rundir import MetricsWriter

STATE_FORMAT = "sam-distill/train-state"


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
    cpu_bf16: bool = False
    num_workers: int = 0

    @classmethod
    def from_config(cls, config) -> "Schedule":
        """From a config section (``train:`` or ``prompt_stage:``); keys a section lacks take neutral values."""
        return cls(
            epochs=config.epochs, batch_size=config.batch_size, grad_accum=getattr(config, "grad_accum", 1),
            lr=config.lr, min_lr=getattr(config, "min_lr", config.lr * 0.01),
            weight_decay=getattr(config, "weight_decay", 0.0), warmup_steps=getattr(config, "warmup_steps", 0),
            checkpoint_every=config.checkpoint_every, log_every=getattr(config, "log_every", 1),
            max_steps=config.max_steps, amp=getattr(config, "amp", True),
            cpu_bf16=getattr(config, "cpu_bf16", False), num_workers=config.num_workers,
        )


class Objective:
    """What one method trains and how its loss is computed; the loop does the rest.

    Subclasses set ``name`` (stored in the state, so a state of another objective is refused) and ``loss_names``
    (the terms ``losses`` returns, one metrics.csv column each when there are several), and implement ``losses``.
    ``monitor_names`` are values ``losses`` also returns that are logged but not optimised (an accuracy).
    ``unit`` names what the samples are, for the throughput column. An objective that draws random numbers from
    its own generator returns it from ``random_state`` so that resume restores it. With ``eval_every`` set,
    ``evaluate`` runs on rank 0 every that many steps (and at the end); its scores land in ``eval_csv`` and then
    ``after_evaluation`` sees that file (to draw a curve, say).
    """

    name = "objective"
    loss_names: tuple[str, ...] = ("loss",)
    monitor_names: tuple[str, ...] = ()
    unit = "images"
    eval_every: int | None = None
    eval_csv = "eval.csv"
    find_unused_parameters = False  # DDP: set when some trainable parameters may get no gradient in a step

    def __init__(self, model: nn.Module):
        self.model = model

    def collate(self, items: list) -> Any:
        return default_collate(items)

    def losses(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights that training changes; the checkpoint holds these (a frozen part is rebuilt, not re-saved)."""
        return self.model.state_dict()

    def random_state(self) -> dict:
        return {}

    def set_random_state(self, state: dict) -> None:
        pass

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} sets eval_every but has no evaluate()")

    def after_evaluation(self, csv_path: Path) -> None:
        pass


def embedding_mse(student: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MobileSAM's decoupled distillation loss."""
    return F.mse_loss(student(images).float(), targets)


class DistillationObjective(Objective):
    """MobileSAM's decoupled distillation: the student encoder regresses the teacher's cached embeddings. With a
    teacher whose decoder takes several encoder outputs (SAM 2's embedding and high-resolution maps), the student
    returns each by name and the loss is the weighted sum of an MSE on each (one metrics column per output)."""

    name = "distill"
    loss_names = ("mse",)

    def __init__(self, model: nn.Module, output_weights: dict[str, float] | None = None):
        super().__init__(model)
        self.output_weights = dict(output_weights or {})
        if self.output_weights:
            self.loss_names = tuple(f"mse_{output}" for output in self.output_weights)

    def losses(self, model, batch):
        images, targets = batch
        if not isinstance(targets, dict):
            return {"mse": embedding_mse(model, images, targets)}
        outputs = model(images)
        return {f"mse_{name}": weight * F.mse_loss(outputs[name].float(), targets[name])
                for name, weight in self.output_weights.items()}


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


class _SeededSamples(Dataset):
    """Each sample read under its own torch seed, a pure function of (seed, epoch, index): random augmentation
    then gives the same sample whichever worker reads it and whether or not the epoch was resumed halfway."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int):
        self.dataset, self.base = dataset, (seed * 100_003 + epoch) * 1_000_003

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.base + index)  # the CPU generator only: CUDA's is the model's
            return self.dataset[index]


def steps_per_epoch(dataset_size: int, schedule: Schedule, world_size: int, unit: str = "images") -> int:
    per_rank = dataset_size // world_size  # the smallest rank's share: every rank runs the same steps
    steps = per_rank // (schedule.batch_size * schedule.grad_accum)
    if steps == 0:
        raise DistillError(
            f"only {dataset_size} training {unit} for batch_size {schedule.batch_size} × grad_accum "
            f"{schedule.grad_accum} × {world_size} process(es); lower the batch size or add {unit}"
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


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AMX tiles or AVX512-BF16), where oneDNN runs bf16
    convolutions and matmuls 3-4x faster than fp32; elsewhere bf16 autocast would only emulate and slow down."""
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.cpu._is_amx_tile_supported() or (capability == "AVX512" and torch.cpu._is_avx512_bf16_supported())


@dataclass
class Optimisation:
    """AdamW over the trainable parameters, warm-up + cosine, and mixed precision for a whole schedule: AMP on CUDA,
    and bf16 autocast on a CPU that computes bf16 natively when the schedule asks for it (``cpu_bf16``)."""

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
        if device.type == "cpu":
            use_amp, amp_dtype = schedule.cpu_bf16 and cpu_computes_bf16(), torch.bfloat16
        else:
            use_amp = schedule.amp and device.type == "cuda"
            amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(total_steps, optimizer, scheduler, scaler, use_amp, amp_dtype)

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class _Forward(nn.Module):
    """The objective's loss as a module's forward, so DDP sees the step (its gradient hooks are armed in forward,
    and instance models compute their loss in ``losses``, not ``forward``). Only the trained model is a submodule:
    a frozen teacher an objective holds stays out of DDP."""

    def __init__(self, objective: Objective):
        super().__init__()
        self.model = objective.model
        self.objective = [objective]  # a list keeps it out of the module tree

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.objective[0].losses(self.model, batch)


class _Window:
    """Per-term sums since the last metrics row. It travels in the state, so a resumed run writes exactly the rows
    an uninterrupted one would, even when the checkpoint fell between two rows."""

    def __init__(self, sums: dict[str, float] | None = None, counts: dict[str, int] | None = None):
        self.sums, self.counts = dict(sums or {}), dict(counts or {})

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def state(self) -> dict:
        return {"sums": self.sums, "counts": self.counts}

    def means(self, names: list[str], context: DistContext) -> dict[str, float]:
        """The window's mean of each term over its steps on every rank."""
        totals = torch.tensor([[self.sums.get(k, 0.0), self.counts.get(k, 0)] for k in names], dtype=torch.float64,
                              device=context.device)
        if context.distributed:
            torch_dist.all_reduce(totals)
        return {k: s / c for k, (s, c) in zip(names, totals.tolist()) if c}


def _move(batch, device: torch.device):
    """Every tensor of a (nested) batch onto ``device``; everything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _batch_rows(batch) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


def _rank_state(objective: Objective, window: _Window, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "objective": objective.random_state(), "window": window.state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _average_buffers(model: nn.Module, context: DistContext) -> None:
    """Make every rank's floating-point buffers (BatchNorm's running statistics) their mean over the ranks, as
    mmengine's SyncBuffersHook does: each rank updates them from its own batches, so without this the ranks (and a
    checkpoint) would hold rank 0's statistics of half the data, and ranks would disagree."""
    if not context.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            torch_dist.all_reduce(buffer)
            buffer.div_(context.world_size)


def _gather(value, context: DistContext) -> list:
    if not context.distributed:
        return [value]
    gathered = [None] * context.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


def _restore(objective: Objective, optimisation: Optimisation, state_path: Path, context: DistContext,
             log) -> tuple[int, _Window]:
    """Load a saved state into the objective and optimiser; returns (step, metrics window) of this rank."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DistillError(f"{state_path} is not a training state of this toolkit; delete it to start over")
    if state.get("objective") != objective.name:
        saved = state.get("objective") or "an earlier version of the training loop"
        raise DistillError(f"{state_path} holds a training state of {saved}, not of {objective.name}; "
                           "delete it to start over")
    other_parts = DistillError(f"{state_path} was saved with other trainable parts; delete it to start over")
    if set(state["model"]) != set(objective.trainable_state()):
        raise other_parts
    try:
        objective.model.load_state_dict(state["model"], strict=False)  # the frozen rest is not in the state
    except RuntimeError:  # a tensor of another shape
        raise other_parts from None
    optimisation.restore(state)
    ranks = state["ranks"]
    if len(ranks) != context.world_size:
        log(f"train: {state_path} was saved by {len(ranks)} process(es), this run has {context.world_size}; "
            "it continues, but with another data order than an uninterrupted run")
    mine = ranks[context.rank] if context.rank < len(ranks) else ranks[0]
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and context.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], context.device)
    objective.set_random_state(mine["objective"])
    window = _Window(**mine["window"]) if len(ranks) == context.world_size else _Window()
    return int(state["step"]), window


MAX_NONFINITE_STEPS_IN_A_ROW = 20


def gradients_are_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimizer would apply is finite. One batch that overflows (a degenerate box, a
    bf16 rounding) would otherwise turn every weight into NaN and lose the whole run; the gradients are already
    all-reduced here, so every DDP rank takes the same decision."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    # The largest magnitude is finite exactly when every entry is (NaN propagates through max).
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))))


def train(objective: Objective, dataset: Dataset, schedule: Schedule, out_dir: Path,
          context: DistContext = DistContext(), seed: int = 0, resume: bool = True, log=print,
          meta: dict | None = None) -> dict:
    """Train ``objective.model`` in place on ``dataset``; state, metrics and evaluations land in ``out_dir``.

    Every rank calls this with the same arguments; rank 0 writes the files. Returns a summary.
    """
    out_dir = Path(out_dir)
    device = context.device
    model = objective.model.to(device)
    per_epoch = steps_per_epoch(len(dataset), schedule, context.world_size, objective.unit)
    opt = Optimisation.build(model, schedule, per_epoch, device)
    total_steps = opt.total_steps
    if opt.use_amp and device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # oneDNN's bf16 convolutions run fastest channels-last
        log("train: bf16 autocast on this CPU (native bf16), convolution weights channels-last")
    elif schedule.cpu_bf16 and device.type == "cpu":
        log("train: cpu_bf16 asked for, but this CPU has no native bf16 (AMX or AVX512-BF16): training in fp32")

    state_path = out_dir / "last.pt"
    step, window = 0, _Window()
    if resume and state_path.exists():
        step, window = _restore(objective, opt, state_path, context, log)
        log(f"train: resumed from {state_path} at step {step}/{total_steps}")
    start_step = step

    forward: nn.Module = _Forward(objective)
    if context.distributed:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=objective.find_unused_parameters)
    terms = list(objective.loss_names) if len(objective.loss_names) > 1 else []
    logged = ["loss", *terms, *objective.monitor_names]
    throughput = f"{objective.unit}_per_s"
    metrics = MetricsWriter(out_dir / "metrics.csv", ["step", "epoch", "lr", *logged, throughput, "seconds"],
                            resume_step=step, tensorboard_dir=out_dir / "tensorboard") if context.is_main else None
    evaluations: MetricsWriter | None = None

    def save_state() -> None:
        _average_buffers(model, context)
        ranks = _gather(_rank_state(objective, window, device), context)
        if context.is_main:
            atomic_torch_save({"format": STATE_FORMAT, "objective": objective.name, "step": step,
                               "total_steps": total_steps, "model": objective.trainable_state(), **opt.state(),
                               "ranks": ranks, "meta": meta or {}}, state_path)

    def run_evaluation() -> None:
        nonlocal evaluations
        if context.is_main:
            # Evaluation must not move the training's random streams (a DataLoader draws a seed, for one).
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                scores = objective.evaluate()
            if evaluations is None:
                evaluations = MetricsWriter(out_dir / objective.eval_csv, ["step", *scores], resume_step=start_step)
            evaluations.write({"step": step, **scores})
            objective.after_evaluation(out_dir / objective.eval_csv)
            log(f"train: step {step} val " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
            model.train()
        context.barrier()

    started = time.time()
    nonfinite_in_a_row = 0
    micro_per_step = schedule.grad_accum
    bar = tqdm(total=total_steps, initial=step, desc=objective.name, unit="step", disable=not context.is_main)
    samples_seen, window_start = 0, time.time()
    model.train()
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, per_epoch)
        sampler = EpochSampler(len(dataset), seed, epoch, context.rank, context.world_size,
                               skip=step_in_epoch * micro_per_step * schedule.batch_size)
        # The loader's own generator: making its iterator must not draw from the training's random stream.
        batches = iter(DataLoader(_SeededSamples(dataset, seed, epoch), batch_size=schedule.batch_size,
                                  sampler=sampler, drop_last=True, collate_fn=objective.collate,
                                  num_workers=schedule.num_workers, pin_memory=device.type == "cuda",
                                  generator=torch.Generator().manual_seed(seed * 100_003 + epoch)))
        for _ in range(step_in_epoch, per_epoch):
            opt.optimizer.zero_grad(set_to_none=True)
            step_values: dict[str, float] = {}
            for micro in range(micro_per_step):
                batch = _move(next(batches), device)
                sync = micro == micro_per_step - 1 or not context.distributed
                with forward.no_sync() if not sync else nullcontext():
                    with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
                        losses = forward(batch)
                    loss = sum(v for k, v in losses.items() if k not in objective.monitor_names) / micro_per_step
                    opt.scaler.scale(loss).backward()
                for key, value in [("loss", loss), *losses.items()]:
                    scale = 1 if key == "loss" else micro_per_step
                    step_values[key] = step_values.get(key, 0.0) + value.item() / scale
                samples_seen += _batch_rows(batch) * context.world_size
            if opt.scaler.is_enabled() or gradients_are_finite(opt.optimizer):  # fp16's scaler skips on its own
                opt.scaler.step(opt.optimizer)
                opt.scaler.update()
                nonfinite_in_a_row = 0
                window.add({k: v for k, v in step_values.items() if k in logged})
            else:
                nonfinite_in_a_row += 1
                log(f"train: step {step + 1}: non-finite loss or gradient ({step_values['loss']:.4g}); step skipped, "
                    f"the weights are left as they were")
                if nonfinite_in_a_row >= MAX_NONFINITE_STEPS_IN_A_ROW:
                    raise DistillError(
                        f"training diverged: {nonfinite_in_a_row} steps in a row up to step {step + 1} had a "
                        f"non-finite loss or gradient; the checkpoint in {out_dir} is from before that (lower "
                        f"train.lr, or set train.cpu_bf16: false) and the run resumes from it")
            opt.scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_values['loss']:.4g}")
            if step % schedule.log_every == 0 or step == total_steps:
                means = window.means(logged, context)
                if metrics:
                    seconds = time.time() - window_start
                    metrics.write({"step": step, "epoch": epoch, "lr": opt.scheduler.get_last_lr()[0], **means,
                                   throughput: samples_seen / max(seconds, 1e-9), "seconds": time.time() - started})
                window, samples_seen, window_start = _Window(), 0, time.time()
            if step % schedule.checkpoint_every == 0 or step == total_steps:
                save_state()
            if objective.eval_every and (step % objective.eval_every == 0 or step == total_steps):
                run_evaluation()
            if step >= total_steps:
                break
    bar.close()
    if metrics:
        metrics.close()
    context.barrier()
    return {"steps": step, "total_steps": total_steps, "seconds": round(time.time() - started, 2)}
