"""Low-rank adapters (LoRA, Hu et al. 2021) on the attention projections of an image encoder.

``add_lora`` swaps each matching ``nn.Linear`` (by default ``attn.qkv`` and ``attn.proj``: the names in
segment-anything's ``ImageEncoderViT`` blocks, TinyViT's attention and timm's ViTs) for a :class:`LoRALinear`
whose base weight is frozen and whose update ``B @ A`` is trained; ``merge_lora`` folds the update back into
plain ``nn.Linear`` layers, so the adapted encoder saves and loads as the architecture it came from.
peft's ``LoraConfig`` does the same on Hugging Face models; this small module keeps that dependency out.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError

ATTENTION_PROJECTIONS = ("attn.qkv", "attn.proj")
ENCODER_MODES = ("frozen", "lora", "full")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) · x Aᵀ Bᵀ`` with ``base`` frozen. A starts as kaiming noise and B as zeros, so
    the adapted layer equals the base one until training moves B."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise DistillError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T.to(x.dtype)) @ self.lora_b.T.to(x.dtype) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (the base layer is not changed)."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        linear.weight.copy_(base.weight + (self.lora_b @ self.lora_a).to(base.weight.dtype) * self.scale)
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        return linear


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def add_lora(module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = ATTENTION_PROJECTIONS,
             setting: str = "lora_targets") -> list[str]:
    """Wrap every ``nn.Linear`` of ``module`` whose name ends with one of ``targets``; returns their names.
    Only the adapters train afterwards if the caller froze the rest (the wrapped base layers are frozen here).
    ``setting`` is the config key that names the targets, for the error when none is found."""
    names = [name for name, child in module.named_modules()
             if isinstance(child, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise DistillError(f"LoRA found no linear layer named {' or '.join(targets)} in {type(module).__name__} "
                           f"(a ConvNet has none: use full or frozen); set {setting} to names its attention "
                           "layers have")
    for name in names:
        _set_child(module, name, LoRALinear(module.get_submodule(name), rank, alpha))
    return names


def adapt_encoder(encoder: nn.Module, mode: str, rank: int = 16, alpha: float = 32.0,
                  targets: tuple[str, ...] = ATTENTION_PROJECTIONS, setting: str = "encoder.lora_targets") -> list[str]:
    """Mark what of an image encoder trains: ``frozen`` nothing, ``full`` every weight, ``lora`` only low-rank
    adapters on ``targets`` (their names are returned). RSPrompter's PEFT configs: rank 16, alpha 32 on qkv."""
    if mode not in ENCODER_MODES:
        raise DistillError(f"encoder training must be one of {', '.join(ENCODER_MODES)}, got {mode!r}")
    encoder.requires_grad_(mode == "full")
    return add_lora(encoder, rank, alpha, tuple(targets), setting) if mode == "lora" else []


def encoder_mode(value) -> str:
    """A model config's ``train_encoder``: frozen, lora or full (files of earlier versions stored a bool)."""
    if isinstance(value, bool) or value is None:
        return "full" if value else "frozen"
    return str(value)


def lora_settings(config: dict) -> tuple[int, float, tuple[str, ...]]:
    """(rank, alpha, targets) of a model config, RSPrompter's PEFT values by default."""
    return (int(config.get("lora_rank", 16)), float(config.get("lora_alpha", 32.0)),
            tuple(config.get("lora_targets", ("attn.qkv",))))


def merged_encoder_config(model: nn.Module) -> dict:
    """Fold a model's LoRA adapters into its encoder (in place) and return the config its saved file carries: an
    adapted encoder is saved as the plain architecture, so the file loads without adapters (``adapted`` says
    what it was)."""
    config = dict(model.config)
    if merge_lora(model) and config.get("train_encoder") == "lora":
        config.update(train_encoder="frozen", adapted="lora", lora_rank=lora_settings(config)[0])
        model.adapted = []
    return config


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRALinear` inside ``module`` by its merged ``nn.Linear``; returns how many."""
    adapted = [(name, child) for name, child in module.named_modules() if isinstance(child, LoRALinear)]
    for name, child in adapted:
        _set_child(module, name, child.merged())
    return len(adapted)
