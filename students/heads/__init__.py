"""Automatic instance models on any encoder: RSPrompter's prompters (``create_head(name, ...)`` builds one by
name, "query" or "anchor"; ``RSPrompterModel`` wires encoder taps → aggregator → prompter → SAM's decoder)
and the paper's SAM-det / SAM-seg baselines (``rcnn.SamRCNN``). ``load_instance_model`` reads either file."""
from __future__ import annotations

import torch.nn as nn

from ...registry import Registry

HEADS: Registry = Registry("prompter head")


def create_head(name: str, **kwargs) -> nn.Module:
    return HEADS.get(name)(**kwargs)


from . import anchor_prompter, query_prompter  # noqa: E402,F401  (registration side effects)
from .aggregator import Aggregator, TappedEncoder, encoder_taps  # noqa: E402,F401
from .model import PROMPTER_FORMAT, RSPrompterModel, build_prompter, load_prompter, save_prompter  # noqa: E402,F401
from .rcnn import RCNN_FORMAT, load_rcnn  # noqa: E402


def load_instance_model(path) -> tuple[nn.Module, list[dict]]:
    """A prompter or SAM-det/SAM-seg file → (model with ``predict`` and ``image_size``, its classes)."""
    import torch

    from ...errors import DistillError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise DistillError(f"model {path} does not exist") from None
    except Exception as err:
        raise DistillError(f"{path} is not a model file of this toolkit ({str(err).splitlines()[0]})") from None
    if isinstance(payload, dict) and payload.get("format") == RCNN_FORMAT:
        return load_rcnn(path)
    return load_prompter(path)
