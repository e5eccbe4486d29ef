"""The one registry of methods: each method package registers its recipe here under the name a config's
``recipe:`` gives, and ``distill run`` looks it up (``METHODS.get(config.recipe)``)."""
from __future__ import annotations

from sam_distill.core.registry import Registry

METHODS: Registry = Registry("recipe")
