"""Student image encoders: each maps a padded ``img_size``×``img_size`` image to SAM's
256×(img_size/16)×(img_size/16) embedding, so SAM's prompt encoder and mask decoder work on top.

``create_student(name)`` builds one by name, as ``timm.create_model`` does.
"""
from __future__ import annotations

import torch.nn as nn

from sam_distill.core.registry import Registry

STUDENTS: Registry = Registry("student")


def create_student(name: str, image_size: int = 1024, **kwargs) -> nn.Module:
    """Build a randomly initialised student encoder. It carries ``img_size`` as SAM's encoders do."""
    builder = STUDENTS.get(name)
    model = builder(name, image_size=image_size, **kwargs)
    model.img_size = image_size
    return model


def list_students() -> list[str]:
    return STUDENTS.names()


from sam_distill.students import timm_student, tinyvit  # noqa: E402,F401  (registration side effects)
