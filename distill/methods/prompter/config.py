"""The ``prompter`` method's config section."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section


class PrompterConfig(Section):
    """RSPrompter: which prompter, which encoder taps, whether SAM's decoder trains too."""

    head: Literal["query", "anchor"] = "query"
    taps: Optional[list[int]] = Field(None, description="ViT blocks / TinyViT stages / timm levels; default: every "
                                      "second ViT block (the authors' select_layers), every stage otherwise")
    width: int = Field(256, ge=8, multiple_of=8, description="the aggregated map's channels (the authors': 256)")
    hidden: int = Field(32, ge=8, multiple_of=8, description="each tapped layer's reduced width (the authors': 32)")
    norm: Literal["batch", "group"] = Field("batch", description="the aggregator's normalisation (the authors': "
                                            "batch; group for batches of one or two)")
    sincos: bool = Field(True, description="prompt embeddings as sin(e[..., ::2]) + e[..., 1::2] of the MLP's output "
                         "(the paper's sin-cos: an MLP needs sin to reach SAM's high-frequency positional codes)")
    num_queries: int = Field(16, ge=1, description="query prompter only (the authors' NWPU config: 70)")
    decoder_layers: int = Field(6, ge=1, description="query prompter: masked-attention layers (the authors': 6)")
    pixel_decoder: Literal["deformable", "pyramid"] = Field(
        "deformable", description="query prompter: Mask2Former's multi-scale deformable-attention pixel decoder, or "
        "the simple pyramid's levels as they are (faster)")
    pixel_decoder_layers: int = Field(3, ge=1, description="query prompter: deformable-attention layers (the "
                                      "authors': 3)")
    dense_prompt: bool = Field(True, description="query prompter: Mask2Former's coarse mask as SAM's dense prompt "
                               "(the authors' decoder_plus)")
    prompts_per_object: int = Field(5, ge=1, description="K prompt embeddings per object (the authors' K: 5)")
    train_decoder: bool = False
