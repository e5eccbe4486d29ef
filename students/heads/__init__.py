"""Automatic prompters (RSPrompter) on any encoder: ``create_head(name, ...)`` builds a prompter by name
("query" or "anchor"); ``RSPrompterModel`` wires encoder taps → aggregator → prompter → SAM's decoder."""
from __future__ import annotations

import torch.nn as nn

from ...registry import Registry

HEADS: Registry = Registry("prompter head")


def create_head(name: str, **kwargs) -> nn.Module:
    return HEADS.get(name)(**kwargs)


from . import anchor_prompter, query_prompter  # noqa: E402,F401  (registration side effects)
from .aggregator import Aggregator, TappedEncoder, encoder_taps  # noqa: E402,F401
from .model import PROMPTER_FORMAT, RSPrompterModel, build_prompter, load_prompter, save_prompter  # noqa: E402,F401
