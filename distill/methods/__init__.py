"""The methods, one package each; importing this package registers them all (as timm's models register at
its package face). Each owns its model, objective, config section and recipe."""
from sam_distill.methods import fastsam, finetune, mobilesam, prompter, rcnn, sam_cls  # noqa: F401  (registration)
from sam_distill.methods.registry import METHODS

__all__ = ["METHODS"]
