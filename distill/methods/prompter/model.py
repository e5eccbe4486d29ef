"""``RSPrompterModel``: encoder (frozen by default) → feature taps → aggregator → prompter → SAM's prompt
encoder and mask decoder (frozen by default), for a SAM, SAM 2 or HQ-SAM (``sam.families``). Saved as one
plain-data ``torch.save`` that loads with ``weights_only=True``: ``{"format": "sam-distill/prompter", "config":
{...}, "classes": [...], "state_dict": ...}``; ``config["sam"]`` rebuilds a SAM 2 or HQ-SAM."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from sam_distill.core.fileio import load_tagged, save_tagged_model
from sam_distill.sam.families import ImageFeatures, SamParts, build_sam_parts
from sam_distill.students.heads import create_head
from sam_distill.students.heads.aggregator import Aggregator, TappedEncoder
from sam_distill.students.lora import adapt_encoder, encoder_mode, lora_settings, merged_encoder_config

PROMPTER_FORMAT = "sam-distill/prompter"


class RSPrompterModel(nn.Module):
    def __init__(self, sam: SamParts, config: dict):
        super().__init__()
        self.config = {**config, "sam": sam.spec}
        self.image_size = int(sam.image_size)
        self.grid = self.image_size // 16
        self.sam = sam
        self.encoder = TappedEncoder(sam, config.get("taps"))
        width = int(config.get("width", 256))
        self.aggregator = Aggregator(self.encoder.channels, self.grid, width, int(config.get("hidden", 32)),
                                     config.get("norm", "batch"))
        self.head = create_head(config["head"], width=width, num_classes=int(config["num_classes"]),
                                image_size=self.image_size, **config.get("head_kwargs", {}))
        self.train_encoder = encoder_mode(config.get("train_encoder"))
        self.train_decoder = bool(config.get("train_decoder", False))
        self.adapted = adapt_encoder(sam.image_encoder, self.train_encoder, *lora_settings(config))
        sam.prompt_encoder.requires_grad_(False)
        sam.mask_decoder.requires_grad_(self.train_decoder)

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam.mask_decoder

    def train(self, mode: bool = True):
        super().train(mode)
        self.sam.train(False)
        self.sam.image_encoder.train(mode and self.train_encoder == "full")  # else it stays in inference mode
        self.sam.mask_decoder.train(mode and self.train_decoder)
        return self

    def features(self, images: torch.Tensor) -> tuple[ImageFeatures, torch.Tensor]:
        """(what the SAM's decoder takes of the images, aggregated map B×W×G×G)."""
        with nullcontext() if self.train_encoder != "frozen" and torch.is_grad_enabled() else torch.no_grad():
            embeddings, taps = self.encoder(images)
        return embeddings, self.aggregator(taps)

    def decode(self, features: ImageFeatures, prompts: torch.Tensor,
               mask_prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's features, n×K×256 sparse prompts and optionally n×4G×4G mask logits as the dense prompt
        (SAM's ``mask_input``; else its no-mask embedding) → low-res mask logits n×4G×4G, IoU n."""
        embedding = features.embed
        if prompts.shape[0] == 0:
            size = 4 * embedding.shape[-1]
            return embedding.new_zeros(0, size, size), embedding.new_zeros(0)
        dense = None if mask_prompts is None else \
            self.prompt_encoder.mask_downscaling(mask_prompts[:, None].to(embedding.dtype))
        masks, iou = self.sam.decode(features, prompts, dense)
        return masks[:, 0], iou[:, 0]

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        embeddings, features = self.features(images)
        return self.head.losses(self, features, embeddings, targets)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, score_threshold: float = 0.05) -> list[dict]:
        """Per image: low-res mask logits (n×4G×4G, on the padded S×S input), scores and 1-based labels."""
        embeddings, features = self.features(images)
        return self.head.predict(self, features, embeddings, score_threshold)


def build_prompter(config: dict, checkpoint: Path | None = None) -> RSPrompterModel:
    """config keys: encoder, image_size, head, num_classes, taps, width, hidden, norm, head_kwargs, train_encoder,
    train_decoder (and lora_* with train_encoder lora); a saved model's ``sam`` (its SAM's family and spec)."""
    sam = build_sam_parts(config["encoder"], int(config["image_size"]), checkpoint, config.get("sam"))
    return RSPrompterModel(sam, config)


def save_prompter(model: RSPrompterModel, path: Path, classes: list[dict], meta: dict | None = None) -> Path:
    """A plain file: LoRA adapters are merged into the encoder's weights first (in place)."""
    return save_tagged_model(path, PROMPTER_FORMAT, model, config=merged_encoder_config(model), classes=classes,
                             meta=meta or {})


def load_prompter(path: Path) -> tuple[RSPrompterModel, list[dict]]:
    """A saved prompter and its classes (COCO categories in label order, label i+1 = classes[i])."""
    payload = load_tagged(path, PROMPTER_FORMAT, "prompter model", "make one with a `recipe: prompter` run")
    model = build_prompter(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["classes"]
