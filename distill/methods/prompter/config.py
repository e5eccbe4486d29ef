"""The ``prompter`` method's config section."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section


class PrompterConfig(Section):
    """RSPrompter: which prompter, which encoder taps, whether SAM's decoder trains too."""

    head: Literal["query", "anchor"] = "query"
    taps: Optional[list[int]] = Field(None, description="ViT blocks / TinyViT stages / timm levels; default: every few")
    width: int = Field(128, ge=8, multiple_of=8)
    num_queries: int = Field(16, ge=1, description="query prompter only")
    prompts_per_object: int = Field(4, ge=2)
    train_decoder: bool = False
