"""Training and evaluating the automatic instance models (RSPrompter heads, SAM-det, SAM-seg) on COCO data.

One loop for all of them: AdamW with warm-up + cosine (the foundation's schedule), AMP on CUDA, an atomic
``last.pt`` every N steps that ``resume`` continues, metrics.csv for the losses and ap.csv/ap_curve.png for
the validation AP measured along the way. A model only needs ``losses(images, targets)`` (a dict of
scalars), ``predict(images, score_threshold)``, ``image_size`` and ``train_encoder``/``train_decoder``.
The shared recipe steps (data, split, train, AP, reports) live here too, so every method is measured alike."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_torch_save
from sam_distill.core.rundir import MetricsWriter, read_metrics
from sam_distill.data.coco import collate
from sam_distill.eval.coco_ap import INSTANCE_METRICS as METRICS
from sam_distill.train.loop import EpochSampler, Optimisation, Schedule, steps_per_epoch

STATE_FORMAT = "sam-distill/instance-train-state"
LOSS_FIELDS = ["step", "epoch", "lr", "loss", "class", "mask_bce", "mask_dice", "loss_objectness",
               "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "images_per_s", "seconds"]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights that change during training (a frozen encoder/decoder is rebuilt, not re-saved)."""
    frozen = [prefix for prefix, trains in (("encoder.", model.train_encoder), ("mask_decoder.", model.train_decoder),
                                            ("prompt_encoder.", False)) if not trains]
    return {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(frozen))}


def plot_ap_curve(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("mask_AP", "mask_AP50", "box_AP50"):
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("validation AP")
    axis.set_title(title, fontsize=9)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def train_instance_model(model, dataset, schedule: Schedule, out_dir: Path, device: torch.device, seed: int = 0,
                         evaluate: Callable[[], dict] | None = None, eval_every: int | None = None,
                         resume: bool = True, log=print, meta: dict | None = None, title: str = "model") -> dict:
    """Train ``model`` in place on a CocoInstances dataset; returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    per_epoch = steps_per_epoch(len(dataset), schedule, 1)
    opt = Optimisation.build(model, schedule, per_epoch, device)
    total_steps, optimizer, scheduler, scaler = opt.total_steps, opt.optimizer, opt.scheduler, opt.scaler
    use_amp, amp_dtype = opt.use_amp, opt.amp_dtype

    state_path, step = out_dir / "last.pt", 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise DistillError(f"{state_path} is not an instance-model training state; delete it to start over")
        loaded = model.load_state_dict(state["model"], strict=False)
        if loaded.unexpected_keys or set(loaded.missing_keys) & set(trainable_state(model)):
            raise DistillError(f"{state_path} was saved with other trainable parts; delete it to start over")
        step = opt.restore(state)
        log(f"train: resumed from {state_path} at step {step}/{total_steps}")

    metrics = MetricsWriter(out_dir / "metrics.csv", LOSS_FIELDS, resume_step=step)
    ap_fields = ["step"] + [f"{kind}_{name}" for kind in ("mask", "box") for name in METRICS]
    ap_writer = MetricsWriter(out_dir / "ap.csv", ap_fields, resume_step=step) if evaluate else None

    def run_eval() -> None:
        scores = evaluate()
        ap_writer.write({"step": step, **scores})
        plot_ap_curve(out_dir / "ap.csv", out_dir / "ap_curve.png", title)
        log(f"train: step {step} val " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
        model.train()

    def save_state() -> None:
        atomic_torch_save({"format": STATE_FORMAT, "step": step, "total_steps": total_steps,
                           "model": trainable_state(model), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                           "rng": torch.get_rng_state(), "meta": meta or {}}, state_path)

    started = time.time()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step")
    window: dict[str, float] = {}
    window_steps, images_seen, window_start = 0, 0, time.time()
    model.train()
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, per_epoch)
        sampler = EpochSampler(len(dataset), seed, epoch, 0, 1,
                               skip=step_in_epoch * schedule.grad_accum * schedule.batch_size)
        batches = iter(DataLoader(dataset, batch_size=schedule.batch_size, sampler=sampler, drop_last=True,
                                  collate_fn=collate, num_workers=schedule.num_workers))
        for _ in range(step_in_epoch, per_epoch):
            optimizer.zero_grad(set_to_none=True)
            for _micro in range(schedule.grad_accum):
                images, items = next(batches)
                targets = [{k: item[k].to(device) for k in ("masks", "boxes", "labels")} for item in items]
                with torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext():
                    losses = model.losses(images.to(device), targets)
                loss = sum(losses.values()) / schedule.grad_accum
                scaler.scale(loss).backward()
                for key, value in losses.items():
                    window[key] = window.get(key, 0.0) + value.item() / schedule.grad_accum
                window["loss"] = window.get("loss", 0.0) + loss.item()
                images_seen += images.shape[0]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{window['loss'] / window_steps:.3g}")
            if step % schedule.log_every == 0 or step == total_steps:
                seconds = time.time() - window_start
                metrics.write({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                               **{k: v / window_steps for k, v in window.items()},
                               "images_per_s": images_seen / max(seconds, 1e-9), "seconds": time.time() - started})
                window, window_steps, images_seen, window_start = {}, 0, 0, time.time()
            if step % schedule.checkpoint_every == 0 or step == total_steps:
                save_state()
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == total_steps):
                run_eval()
            if step >= total_steps:
                break
    bar.close()
    metrics.close()
    if ap_writer:
        ap_writer.close()
    return {"steps": step, "total_steps": total_steps, "seconds": round(time.time() - started, 2)}


# ---------------------------------------------------------------------------------------------
# The steps every instance recipe of ``distill run`` shares: data, split, training, AP, reports


def resolve_coco_data(config, run_dir) -> tuple[Path, Path]:
    """(annotations json, image folder) from ``instances:``: a real dataset or generated shapes."""
    from sam_distill.data.coco import make_synthetic_coco

    data = config.instances
    if data.annotations is not None:
        if data.images is None:
            raise DistillError("config: instances.images must name the image folder of instances.annotations")
        return data.annotations, data.images
    if data.synthetic is not None:
        folder = run_dir.path / "data" / "synthetic_coco"
        if not (folder / "annotations.json").exists():
            spec = data.synthetic
            make_synthetic_coco(folder, spec.count, spec.size, spec.seed)
            run_dir.log(f"data: generated {spec.count} shape images with known instances in {folder}")
        return folder / "annotations.json", folder / "images"
    raise DistillError("config: set instances.annotations + instances.images (COCO) or instances.synthetic")


def split_datasets(annotations: Path, images: Path, data, image_size: int):
    """(train, val) CocoInstances of the fixed file-name-hash split; augmentation on the training side only."""
    from sam_distill.data.coco import CocoInstances, hash_split

    full = CocoInstances(annotations, images, image_size)
    train_pos, val_pos = hash_split(full.file_names(), data.val_fraction)
    ids = full.image_ids
    train_ids = [ids[p] for p in train_pos][: data.max_train_images]
    val_ids = [ids[p] for p in val_pos][: data.max_val_images]
    if not train_ids:
        raise DistillError(f"{annotations}: no training images after the split; lower instances.val_fraction")
    return (CocoInstances(annotations, images, image_size, train_ids, augment=data.augment),
            CocoInstances(annotations, images, image_size, val_ids))


def describe_encoder(spec) -> str:
    return f"{spec.name} from {spec.checkpoint}" if spec.checkpoint else \
        f"{spec.name} with RANDOM-INITIALISED weights (no pretrained encoder)"


def write_instance_reports(run_dir, method: str, model_name: str, val_set, results: list[dict], encoder: str,
                           overlays: int) -> dict:
    """Validation AP of ``results`` into ``reports/`` (ap.json, val_results.json, the report's
    ``metrics_<method>.json`` with AP in percent) plus overlay images; returns the AP in [0, 1]."""
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.images import load_rgb
    from sam_distill.eval.coco_ap import instance_ap
    from sam_distill.methods.instance_predict import save_overlay

    reports = run_dir.sub("reports")
    atomic_write_json(reports / "val_results.json", results)
    scores = instance_ap(val_set.coco, results, val_set.image_ids)
    atomic_write_json(reports / "ap.json", {"method": method, "val_images": len(val_set), "encoder": encoder, **scores})
    atomic_write_json(reports / f"metrics_{method}.json", {
        "model": model_name, "metrics": {k: v * 100 for k, v in scores.items() if k.startswith("mask_")}})
    for image_id in val_set.image_ids[:overlays]:
        info = val_set.coco.imgs[image_id]
        save_overlay(load_rgb(val_set.images_dir / info["file_name"]),
                     [r for r in results if r["image_id"] == image_id], val_set.classes,
                     reports / "overlays" / f"{Path(info['file_name']).stem}.png")
    run_dir.log(f"{method}: val " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    return scores


def run_trained_instance_recipe(config, run_dir, method: str, build: Callable[[int], torch.nn.Module],
                                save: Callable[..., Path], model_file: str) -> dict:
    """The recipe of every trained instance model: data → split → train (resumable, AP along the way) →
    model file → validation AP, reports and overlays. ``build(num_classes)`` makes the model."""
    from sam_distill.core.device import init_distributed
    from sam_distill.eval.coco_ap import instance_ap
    from sam_distill.methods.instance_predict import predict_dataset

    context = init_distributed(config.device)
    if context.distributed:
        raise DistillError(f"the {method} recipe runs on one process; start it without torchrun")
    train, evaluation = config.train, config.instances.eval
    annotations, images = resolve_coco_data(config, run_dir)
    train_set, val_set = split_datasets(annotations, images, config.instances, config.encoder.image_size)
    run_dir.log(f"data: {len(train_set)} training and {len(val_set)} validation images, "
                f"{len(train_set.classes)} classes from {annotations}")
    torch.manual_seed(config.seed)
    model = build(len(train_set.classes))
    encoder = describe_encoder(config.encoder)
    run_dir.log(f"{method}: on {encoder}, encoder {'trained' if model.train_encoder else 'frozen'}")
    meta = {"method": method, "encoder": encoder, "run": str(run_dir.path), "annotations": str(annotations)}
    device = context.device

    def evaluate() -> dict:
        results = predict_dataset(model, val_set, val_set.classes, device, train.batch_size,
                                  evaluation.score_threshold, progress=False)
        return instance_ap(val_set.coco, results, val_set.image_ids)

    summary = train_instance_model(model, train_set, Schedule.from_config(train), run_dir.sub(f"checkpoints/{method}"), device,
                                   config.seed, evaluate if len(val_set) else None, evaluation.every,
                                   log=run_dir.log, meta=meta, title=f"{method} on {config.encoder.name}")
    model_path = save(model, run_dir.sub("model") / model_file, train_set.classes, meta)
    result = {"train": summary, "model": str(model_path)}
    if len(val_set):
        results = predict_dataset(model, val_set, val_set.classes, device, train.batch_size, evaluation.score_threshold)
        result["ap"] = write_instance_reports(run_dir, method, model_path.name, val_set, results, encoder,
                                              evaluation.overlays)
    else:
        run_dir.log(f"{method}: the split left no validation images, so no AP was measured; raise instances.val_fraction")
    run_dir.log(f"{method}: model at {model_path}")
    return result
