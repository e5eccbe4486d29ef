"""Does a SAM trained from random weights learn to follow its prompts? A short probe on the NWPU training split.

Trains a SAM for a few hundred steps of ``recipe: finetune``'s objective (boxes only, SAM's focal : dice = 20 : 1),
prints the training Dice every 20 steps and, at the end, how much higher the mask logits are inside the prompted
instance than outside it on a few validation images. A decoder that ignores its prompt paints the same map for
every box of an image, so that gap stays near zero or below; box mIoU can stay at 0 for a while after the gap
opens, because it only counts logits above 0.

    python benchmarks/finetune_prompt_following.py [--encoder timm_resnet34] [--size 256] [--steps 400] [--lr 4e-4]

With ``--checkpoint`` it trains nothing and measures the gap of a run in progress (its ``last.pt`` training state,
``--encoder`` and ``--size`` as in its config) or of any SAM model file:

    python benchmarks/finetune_prompt_following.py --encoder timm_resnet34 --size 512 \
        --checkpoint runs/chain_nwpu_teacher/checkpoints/finetune/last.pt

Measured figures: docs/CHAIN.md (stage a).
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path


def prompt_gap(sam, dataset, images: int) -> float:
    """Mean over prompted instances of (mean logit inside the instance − mean logit outside it)."""
    import torch

    from sam_distill.sam.prompts import decode_image
    from sam_distill.students.heads.losses import resize_masks

    gaps = []
    sam.eval()
    with torch.no_grad():
        for index in range(min(images, len(dataset))):
            item = dataset[index]
            if not len(item["boxes"]):
                continue
            logits, _ = decode_image(sam, sam.image_encoder(item["image"][None]), boxes=item["boxes"].float())
            inside = resize_masks(item["masks"], logits.shape[-1]) > 0.5
            for logit, mask in zip(logits[:, 0], inside):
                if mask.any() and (~mask).any():
                    gaps.append(float(logit[mask].mean() - logit[~mask].mean()))
    return sum(gaps) / max(len(gaps), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="timm_resnet34", help="any encoder name of `recipe: finetune`")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nwpu_vhr10"))
    parser.add_argument("--checkpoint", type=Path, help="measure this training state or model file instead")
    args = parser.parse_args()

    import torch

    from sam_distill.data.coco import CocoInstances, hash_split
    from sam_distill.methods.finetune.objective import FineTuneObjective, LossWeights, PromptableSam, PromptSampling
    from sam_distill.sam.model_file import build_sam_for
    from sam_distill.train.loop import Schedule, train

    annotations, images = args.data / "annotations_train.json", args.data / "images"
    full = CocoInstances(annotations, images, args.size)
    train_pos, val_pos = hash_split(full.file_names(), 0.2)
    train_set = CocoInstances(annotations, images, args.size, [full.image_ids[p] for p in train_pos], augment=True)
    val_set = CocoInstances(annotations, images, args.size, [full.image_ids[p] for p in val_pos])
    torch.manual_seed(0)
    model = PromptableSam(build_sam_for(args.encoder, args.size), "full")
    if args.checkpoint is not None:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        if "model" in state and "step" in state:  # a training state of the one training loop
            model.load_state_dict(state["model"])
            name = f"step {state['step']}"
        else:
            from sam_distill.sam.model_file import load_model

            model = PromptableSam(load_model(args.checkpoint)[0], "full")
            name = args.checkpoint.name
        gap = prompt_gap(model.sam, val_set, 10)
        print(f"{args.checkpoint} ({name}): logit gap inside − outside the prompted instance (10 val images): "
              f"{gap:+.2f}")
        return
    objective = FineTuneObjective(model, PromptSampling(masks_per_image=8, box_probability=1.0, correction_rounds=0),
                                  LossWeights(20.0, 1.0), seed=0)
    schedule = Schedule(epochs=1000, batch_size=4, grad_accum=1, lr=args.lr, min_lr=args.lr / 20, weight_decay=0.01,
                        warmup_steps=50, checkpoint_every=10 ** 6, log_every=20, amp=False, max_steps=args.steps)
    folder = Path(tempfile.mkdtemp())
    start = time.time()
    train(objective, train_set, schedule, folder, log=lambda message: None)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    print(f"{args.encoder} at {args.size} px, lr {args.lr}, {args.steps} steps: {time.time() - start:.0f} s")
    print("  training dice by step: " + " ".join(f"{r['step']}:{float(r['mask_dice']):.3f}" for r in rows))
    gap = prompt_gap(model.sam, val_set, 10)
    print(f"  logit gap inside − outside the prompted instance (10 val images): {gap:+.2f}")


if __name__ == "__main__":
    main()
