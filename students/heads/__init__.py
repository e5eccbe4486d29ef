"""Heads that sit on a SAM encoder's features, as plain ``nn.Module``s without IO: RSPrompter's feature
aggregator and prompters (``create_head(name, ...)`` builds one by name, "query" or "anchor") and SAM-cls's
mask classifier. The models that wire them to a SAM, and their files, belong to their methods
(``sam_distill.methods.prompter``, ``.rcnn``, ``.sam_cls``)."""
from __future__ import annotations

import torch.nn as nn

from sam_distill.core.registry import Registry

HEADS: Registry = Registry("prompter head")


def create_head(name: str, **kwargs) -> nn.Module:
    return HEADS.get(name)(**kwargs)


from sam_distill.students.heads import anchor_prompter, query_prompter  # noqa: E402,F401  (registration side effects)
from sam_distill.students.heads.aggregator import Aggregator, TappedEncoder, encoder_taps  # noqa: E402,F401
