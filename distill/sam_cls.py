"""SAM-cls, the ``sam_cls`` recipe: SAM's everything mode proposes class-agnostic masks, a classifier labels them.

Two classifiers (``sam_cls.classifier``):

* ``pooled``: :class:`~sam_distill.students.heads.mask_classifier.MaskClassifier`, an MLP on the frozen
  encoder's embedding averaged inside each mask. Its training set is the training split's everything-mode
  proposals, each labelled with the class of the ground-truth mask it overlaps by ``match_iou`` (mask IoU,
  pycocotools) or background, plus the ground-truth masks themselves (so every class has clean examples
  even when the proposals miss it).
* ``clip``: zero-shot CLIP on each mask's crop against the dataset's class names (prompt-template
  ensembles) and background names; the same crops and embeddings as FastSAM's text mode (``clip_select``).

Proposals come from segment-anything's ``SamAutomaticMaskGenerator`` through ``pseudo_label`` (one atomic
JSON per image, resumable, refused if the encoder or generator settings change). The model file
``model/sam_cls.pt`` holds the SAM, the generator settings, the classes and the classifier, as plain data.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .errors import DistillError
from .fileio import load_tagged, read_json, save_tagged_model, sha256_file
from .run import RECIPES  # run.py imports this module at its bottom to register the recipe

SAM_CLS_FORMAT = "sam-distill/sam-cls"
TRAIN_FIELDS = ["step", "epoch", "lr", "loss", "accuracy", "seconds"]


def match_proposals(proposals: list[dict], ground_truth: list[dict], gt_labels: list[int], min_iou: float) -> np.ndarray:
    """Label of each proposal RLE: that of the ground-truth RLE it overlaps most if the mask IoU is at least
    ``min_iou``, else 0 (background)."""
    labels = np.zeros(len(proposals), dtype=np.int64)
    if not proposals or not ground_truth:
        return labels
    iou = np.asarray(mask_utils.iou(proposals, ground_truth, [0] * len(ground_truth))).reshape(len(proposals), -1)
    best = iou.argmax(1)
    hit = iou[np.arange(len(proposals)), best] >= min_iou
    labels[hit] = np.asarray(gt_labels)[best[hit]]
    return labels


def input_frame(masks: np.ndarray, input_size: tuple[int, int], image_size: int) -> torch.Tensor:
    """N×H×W masks at the image's own resolution → N×S×S soft masks on SAM's padded model-input frame."""
    if len(masks) == 0:
        return torch.zeros(0, image_size, image_size)
    resized = F.interpolate(torch.from_numpy(np.asarray(masks, dtype=np.float32))[None], size=tuple(input_size),
                            mode="bilinear", align_corners=False)[0]
    return F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))


def decode_rles(proposals: list[dict], height: int, width: int) -> np.ndarray:
    if not proposals:
        return np.zeros((0, height, width), dtype=bool)
    return mask_utils.decode([p["segmentation"] for p in proposals]).transpose(2, 0, 1).astype(bool)


class SamCls:
    """A SAM (for everything mode and the embedding) plus a mask classifier; probabilities have column 0 =
    background and column i = class i (``classes[i - 1]``)."""

    def __init__(self, sam, config: dict, classes: list[dict], classifier_state: dict):
        from .students.heads.mask_classifier import MaskClassifier

        self.sam, self.config, self.classes = sam.eval(), dict(config), list(classes)
        self.image_size = int(sam.image_encoder.img_size)
        self.classifier = None
        if config["classifier"] == "pooled":
            self.classifier = MaskClassifier(len(classes), config["geometry"], config["hidden"])
            if classifier_state:
                self.classifier.load_state_dict(classifier_state)
            self.classifier.eval()
        else:
            self.text_features = classifier_state["text_features"]
            self.logit_scale = float(classifier_state["logit_scale"])

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    def to(self, device) -> "SamCls":
        self.sam.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        return self

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """One SAM-preprocessed 3×S×S image → its 256×G×G embedding."""
        return self.sam.image_encoder(image[None].to(self.device))[0]

    def features(self, embedding: torch.Tensor, masks: torch.Tensor, input_size) -> torch.Tensor:
        from .students.heads.mask_classifier import pooled_features

        return pooled_features(embedding, masks, tuple(input_size), self.config["geometry"])

    @torch.no_grad()
    def probabilities(self, embedding: torch.Tensor | None, masks: np.ndarray, input_size, image: np.ndarray | None = None,
                      scorer=None) -> torch.Tensor:
        """N×(1 + classes) probabilities of the N masks (H×W, the image's resolution)."""
        if self.classifier is not None:
            frame = input_frame(masks, input_size, self.image_size)
            return self.classifier(self.features(embedding, frame, input_size)).softmax(-1).cpu()
        from .clip_select import classify_masks

        if scorer is None:
            raise DistillError("this SAM-cls model classifies with CLIP; give its local CLIP checkpoint "
                               "(--clip-checkpoint FILE)")
        probabilities = classify_masks(scorer, image, masks, self.text_features, self.logit_scale)
        classes = len(self.classes)
        background = probabilities[:, classes:].sum(1, keepdim=True)
        return torch.cat([background, probabilities[:, :classes]], dim=1)

    def label(self, proposals: list[dict], probabilities: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label 1..C, score, is_background) per proposal.

        Score = probability of the best foreground class × SAM's predicted IoU of the mask. The classifier knows
        *what* the mask shows, SAM's IoU head how *well* it is cut out; COCO AP ranks by score, so a confidently
        classified but ragged mask should rank below an equally confident clean one (Mask Scoring R-CNN's
        reasoning). Both factors lie in [0, 1], so the product stays a probability-like number that one
        ``score_threshold`` can cut. A mask whose most likely class is background is dropped."""
        if len(proposals) == 0:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
        foreground = probabilities[:, 1:]
        best_p, best = foreground.max(1)
        quality = torch.tensor([min(max(p["predicted_iou"], 0.0), 1.0) for p in proposals])
        background = probabilities.argmax(1) == 0
        return (best + 1).numpy(), (best_p * quality).numpy(), background.numpy()

    def result(self, proposal: dict, image_id: int, label: int, score: float) -> dict:
        return {"image_id": int(image_id), "category_id": self.classes[label - 1]["id"],
                "segmentation": proposal["segmentation"], "bbox": list(proposal["bbox"]), "score": float(score)}

    def to_results(self, proposals: list[dict], probabilities: torch.Tensor, image_id: int,
                   score_threshold: float = 0.05) -> list[dict]:
        labels, scores, background = self.label(proposals, probabilities)
        return [self.result(p, image_id, labels[i], scores[i]) for i, p in enumerate(proposals)
                if not background[i] and scores[i] >= score_threshold]

    @torch.no_grad()
    def decode_grid(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything mode's decoding on a fixed embedding: SAM's decoder on the points_per_side² grid, three masks
        per point, ``points_per_batch`` at a time; returns the best (by predicted IoU) low-res logits and IoU per
        point. What the generator adds after this (thresholds, NMS, RLE) is bookkeeping, not network."""
        from segment_anything.utils.amg import build_point_grid

        settings, size = self.config["generator"], self.image_size
        grid = torch.from_numpy(build_point_grid(settings["points_per_side"]) * size).float().to(embedding.device)
        masks, ious = [], []
        for start in range(0, len(grid), settings["points_per_batch"]):
            points = grid[start:start + settings["points_per_batch"], None]
            sparse, dense = self.sam.prompt_encoder(points=(points, torch.ones(len(points), 1, device=points.device)),
                                                    boxes=None, masks=None)
            low, iou = self.sam.mask_decoder(image_embeddings=embedding[None], image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)
            best = iou.argmax(1)
            masks.append(low[torch.arange(len(low)), best])
            ious.append(iou[torch.arange(len(iou)), best])
        return torch.cat(masks), torch.cat(ious)

    @torch.no_grad()
    def decode_and_classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """The bench's decoder phase: grid decoding plus (pooled classifier) classification of each point's mask."""
        logits, _ = self.decode_grid(embedding)
        if self.classifier is None:
            return logits
        side = logits.shape[-1]
        return self.classifier(self.features(embedding, logits > 0, (side, side)))

    def save(self, path: Path, meta: dict | None = None) -> Path:
        state = ({k: v.detach().cpu() for k, v in self.classifier.state_dict().items()} if self.classifier is not None
                 else {"text_features": self.text_features.cpu(), "logit_scale": torch.tensor(self.logit_scale)})
        return save_tagged_model(path, SAM_CLS_FORMAT, self.sam, config=self.config, classes=self.classes,
                                 classifier_state=state, meta=meta or {})


def load_sam_cls(path: Path) -> SamCls:
    from .students.heads.model import build_sam_for

    payload = load_tagged(path, SAM_CLS_FORMAT, "SAM-cls model", "make one with a `recipe: sam_cls` run")
    config = payload["config"]
    sam = build_sam_for(config["encoder"], int(config["image_size"]))
    sam.load_state_dict(payload["state_dict"])
    return SamCls(sam, config, payload["classes"], payload["classifier_state"])


def load_clip_for(spec, device, checkpoint: Path | None = None):
    """The recipe's CLIP scorer; a missing checkpoint is one sentence naming ``sam_cls.clip_checkpoint``."""
    from .clip_select import load_clip

    return load_clip(checkpoint or spec.clip_checkpoint, spec.clip_model, spec.clip_config, device,
                     key="sam_cls.clip_checkpoint", purpose="sam_cls.classifier clip needs")


# ---------------------------------------------------------------------------------------------
# The recipe


def train_classifier(classifier, features: torch.Tensor, labels: torch.Tensor, train, out_dir: Path,
                     device: torch.device, seed: int = 0, log=print) -> dict:
    """Cross-entropy over precomputed features with the foundation's AdamW + warm-up/cosine schedule; one row per
    ``log_every`` steps to ``metrics.csv``. Seconds of work, so it restarts rather than resumes."""
    from .rundir import MetricsWriter
    from .train import Optimisation, Schedule

    schedule = Schedule.from_config(train)
    per_epoch = math.ceil(len(features) / schedule.batch_size)
    classifier.to(device).train()
    opt = Optimisation.build(classifier, schedule, per_epoch, device)
    metrics = MetricsWriter(Path(out_dir) / "metrics.csv", TRAIN_FIELDS)
    generator = torch.Generator().manual_seed(seed)
    features, labels = features.to(device), labels.to(device)
    step, started, window = 0, time.time(), []
    bar = tqdm(total=opt.total_steps, desc="sam-cls classifier", unit="step")
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(features), generator=generator).to(device)
        for start in range(0, len(order), schedule.batch_size):
            batch = order[start:start + schedule.batch_size]
            logits = classifier(features[batch])
            loss = F.cross_entropy(logits, labels[batch])
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            opt.optimizer.step()
            opt.scheduler.step()
            step += 1
            window.append((loss.item(), (logits.argmax(1) == labels[batch]).float().mean().item()))
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3g}")
            if step % schedule.log_every == 0 or step == opt.total_steps:
                metrics.write({"step": step, "epoch": epoch, "lr": opt.scheduler.get_last_lr()[0],
                               "loss": np.mean([w[0] for w in window]), "accuracy": np.mean([w[1] for w in window]),
                               "seconds": round(time.time() - started, 2)})
                window = []
            if step >= opt.total_steps:
                break
        if step >= opt.total_steps:
            break
    bar.close()
    metrics.close()
    classifier.eval()
    with torch.no_grad():
        accuracy = (classifier(features).argmax(1) == labels).float().mean().item()
    log(f"sam_cls: classifier trained {step} steps on {len(features)} masks; training accuracy {accuracy:.3f}")
    return {"steps": step, "masks": len(features), "train_accuracy": accuracy,
            "background_fraction": (labels == 0).float().mean().item()}


def _encoder_identity(sam, spec, seed: int):
    """The encoder as a Teacher, so ``pseudo_label`` can stamp and guard the proposal cache with it."""
    from .teachers import Teacher

    checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
    digest = sha256_file(checkpoint) if checkpoint else f"random-init:{spec.name}:{spec.image_size}:seed{seed}"
    return Teacher(sam, spec.name, spec.name, checkpoint, digest, checkpoint is None)


def _proposal_reader(datasets, label_dir: Path):
    """``image_id → proposal list`` over the label folder ``pseudo_label`` wrote for these datasets' images."""
    from .pseudo_label import image_list, label_path

    paths = {image_id: ds.images_dir / ds.coco.imgs[image_id]["file_name"] for ds in datasets for image_id in ds.image_ids}
    _, root = image_list(list(paths.values()))

    def read(image_id: int) -> list[dict]:
        path = label_path(label_dir, paths[image_id].relative_to(root).as_posix())
        if not path.is_file():
            raise DistillError(f"no everything-mode masks for {paths[image_id]} (unreadable image?); "
                               f"see {label_dir}/skipped-r000.json")
        return read_json(path)["annotations"]

    return sorted(paths.values()), read


def training_features(model: SamCls, dataset, proposals_of, min_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of the training split's proposals (matched to ground truth) and ground truth."""
    features, labels = [], []
    for index in tqdm(range(len(dataset)), desc="sam-cls features", unit="image"):
        item = dataset[index]
        info = dataset.coco.imgs[item["image_id"]]
        anns = [a for a in dataset.coco.imgToAnns[item["image_id"]] if not a.get("iscrowd", 0)]
        proposals = proposals_of(item["image_id"])
        matched = match_proposals([p["segmentation"] for p in proposals], [dataset.coco.annToRLE(a) for a in anns],
                                  [dataset.label_of[a["category_id"]] for a in anns], min_iou)
        embedding = model.embed(item["image"])
        frame = input_frame(decode_rles(proposals, info["height"], info["width"]), item["input_size"], model.image_size)
        features += [model.features(embedding, frame, item["input_size"]),
                     model.features(embedding, item["masks"], item["input_size"])]
        labels += [torch.from_numpy(matched), item["labels"]]
    return torch.cat(features).cpu(), torch.cat(labels).long()


def predict_split(model: SamCls, dataset, proposals_of, score_threshold: float, scorer=None) -> list[dict]:
    """COCO results of a split from its cached everything-mode proposals."""
    from .images import load_rgb

    results = []
    for index in tqdm(range(len(dataset)), desc="sam-cls predict", unit="image"):
        item = dataset[index]
        info = dataset.coco.imgs[item["image_id"]]
        proposals = proposals_of(item["image_id"])
        masks = decode_rles(proposals, info["height"], info["width"])
        if model.classifier is not None:
            probabilities = model.probabilities(model.embed(item["image"]), masks, item["input_size"])
        else:
            probabilities = model.probabilities(None, masks, item["input_size"],
                                                load_rgb(dataset.images_dir / info["file_name"]), scorer)
        results += model.to_results(proposals, probabilities, item["image_id"], score_threshold)
    return results


@RECIPES.register("sam_cls")
def run_sam_cls(config, run_dir) -> dict:
    from .dist import init_distributed
    from .instance_train import describe_encoder, resolve_coco_data, split_datasets, write_instance_reports
    from .pseudo_label import generator_settings, pseudo_label
    from .students.heads.model import build_sam_for

    spec, context = config.sam_cls, init_distributed(config.device)
    if context.distributed:
        raise DistillError("the sam_cls recipe runs on one process; start it without torchrun")
    device = context.device
    scorer = load_clip_for(spec, device) if spec.classifier == "clip" else None  # fail before any heavy work
    annotations, images = resolve_coco_data(config, run_dir)
    plain = config.instances.model_copy(update={"augment": False})  # features of the images as they are
    train_set, val_set = split_datasets(annotations, images, plain, config.encoder.image_size)
    if not len(val_set):
        raise DistillError("config: the split left no validation images to score; raise instances.val_fraction")
    encoder = describe_encoder(config.encoder)
    run_dir.log(f"sam_cls: {spec.classifier} classifier on everything-mode masks of {encoder}; "
                f"{len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} classes")
    torch.manual_seed(config.seed)
    sam = build_sam_for(config.encoder.name, config.encoder.image_size, config.encoder.checkpoint).to(device).eval()
    settings = generator_settings(**spec.everything.model_dump())
    used = [train_set, val_set] if spec.classifier == "pooled" else [val_set]
    paths, proposals_of = _proposal_reader(used, run_dir.path / "proposals")
    counts = pseudo_label(_encoder_identity(sam, config.encoder, config.seed), paths, run_dir.sub("proposals"),
                          settings, context, log=run_dir.log)
    run_dir.log(f"sam_cls: everything mode gave {counts['masks']} new mask(s) on {counts['labelled']} new image(s)")
    model_config = {"encoder": config.encoder.name, "image_size": config.encoder.image_size,
                    "classifier": spec.classifier, "generator": settings, "geometry": spec.geometry,
                    "hidden": spec.hidden, "match_iou": spec.match_iou}
    result = {}
    if spec.classifier == "pooled":
        model = SamCls(sam, model_config, train_set.classes, {}).to(device)
        features, labels = training_features(model, train_set, proposals_of, spec.match_iou)
        result["train"] = train_classifier(model.classifier, features, labels, config.train,
                                           run_dir.sub("checkpoints/sam_cls"), device, config.seed, run_dir.log)
    else:
        names = [c["name"] for c in train_set.classes] + list(spec.background)
        model_config.update(clip_model=spec.clip_model, templates=list(spec.templates), background=list(spec.background),
                            clip_checkpoint=str(spec.clip_checkpoint),
                            clip_config=str(spec.clip_config) if spec.clip_config else None)
        state = {"text_features": scorer.text_features(names, spec.templates),
                 "logit_scale": torch.tensor(scorer.logit_scale)}
        model = SamCls(sam, model_config, train_set.classes, state).to(device)
    meta = {"method": "sam_cls", "encoder": encoder, "run": str(run_dir.path), "annotations": str(annotations)}
    model_path = model.save(run_dir.sub("model") / "sam_cls.pt", meta)
    results = predict_split(model, val_set, proposals_of, config.instances.eval.score_threshold, scorer)
    result["ap"] = write_instance_reports(run_dir, "sam_cls", model_path.name, val_set, results,
                                          encoder, config.instances.eval.overlays)
    result["model"] = str(model_path)
    run_dir.log(f"sam_cls: model at {model_path}")
    return result
