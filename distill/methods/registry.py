"""The one registry of methods. A method registers its recipe once, under the name a config's ``recipe:`` gives,
together with the config sections it reads; the config schema, the saved run config and ``distill run`` all
follow from that entry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from sam_distill.core.config import Section
from sam_distill.core.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable  # run(config, run_dir) -> dict: the recipe, end to end, resumable
    sections: dict[str, type[Section]]  # the config sections it reads, by key
    # check(config): raises DistillError for what no single section can tell is wrong (keys that depend on each
    # other); runs before the run folder is made, so a fixed config is not taken for a different run
    check: Optional[Callable] = None


METHODS: Registry[Method] = Registry("recipe")


def register_method(name: str, sections: dict[str, type[Section]], check: Optional[Callable] = None
                    ) -> Callable[[Callable], Callable]:
    """Decorate a recipe function: ``@register_method("sam_seg", {"encoder": EncoderConfig, ...})``."""

    def add(run: Callable) -> Callable:
        for key, section in sections.items():
            for other in (METHODS.get(n) for n in METHODS.names()):
                if key in other.sections and other.sections[key] is not section:
                    raise ValueError(f"config section {key!r} of {name!r} differs from {other.name!r}'s")
        METHODS.register(name)(Method(name, run, dict(sections), check))
        return run

    return add
