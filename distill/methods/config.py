"""The one typed config schema of ``distill run``, composed from what the methods registered: the run keys
(``recipe``, ``name``, ``run_dir``, ``seed``, ``device``) and every method's sections. A config may carry sections of
other methods (so ``--set recipe=sam_seg`` works on a prompter config); a run saves, and compares on resume, only
the sections its own method reads."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import create_model

from sam_distill.core.config import RunConfigBase, apply_overrides, read_yaml, validate
from sam_distill.methods.registry import METHODS, Method

RUN_KEYS = ("recipe", *RunConfigBase.model_fields)
DEFAULT_RECIPE = "mobilesam"


@lru_cache(maxsize=1)
def run_config_model() -> type[RunConfigBase]:
    methods = [METHODS.get(name) for name in METHODS.names()]
    sections = {key: cls for method in methods for key, cls in method.sections.items()}
    recipes = Literal[tuple(method.name for method in methods)]
    return create_model("RunConfig", __base__=RunConfigBase, recipe=(recipes, DEFAULT_RECIPE),
                        **{key: (cls, cls()) for key, cls in sections.items()})


def parse_config(data: dict, source: str = "config") -> RunConfigBase:
    return validate(run_config_model(), data, source)


def load_config(path: Path | str, overrides: list[str] | None = None) -> RunConfigBase:
    return parse_config(apply_overrides(read_yaml(path), overrides or []), str(path))


def method_of(config: RunConfigBase) -> Method:
    return METHODS.get(config.recipe)


def own_part(config: RunConfigBase) -> dict:
    """The run keys and the sections the config's method reads, as plain data."""
    data = config.model_dump(mode="json", include=set(RUN_KEYS) | set(method_of(config).sections))
    return {"recipe": data.pop("recipe"), **data}


def dump_config(config: RunConfigBase) -> str:
    return yaml.safe_dump(own_part(config), sort_keys=False)
