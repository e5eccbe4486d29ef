"""The config schema is composed from what the methods register: a recipe is named once, a run saves and compares
only the sections its method reads, and unknown keys still fail naming the valid ones."""
from __future__ import annotations

import typing

import pytest
import yaml

from sam_distill.core.errors import DistillError
from sam_distill.methods import METHODS
from sam_distill.methods.config import dump_config, parse_config, run_config_model
from sam_distill.runner import prepare_run_dir

INSTANCE_SECTIONS = {"encoder", "instances", "train"}


def test_the_recipes_are_exactly_the_registered_methods():
    choices = typing.get_args(run_config_model().model_fields["recipe"].annotation)
    assert set(choices) == set(METHODS.names()) == {"mobilesam", "fastsam", "prompter", "sam_det", "sam_seg", "sam_cls",
                                                            "finetune"}
    with pytest.raises(DistillError, match=r"key 'recipe'.*'mobilesam'.*'sam_seg'.*got 'sam_sge'"):
        parse_config({"recipe": "sam_sge"})


@pytest.mark.parametrize("recipe, own", [
    ("mobilesam", {"teacher", "data", "cache", "student", "train", "prompt_stage", "fidelity"}),
    ("fastsam", {"teacher", "data", "fastsam"}),
    ("prompter", INSTANCE_SECTIONS | {"prompter"}),
    ("sam_det", INSTANCE_SECTIONS | {"sam_det"}),
    ("sam_seg", INSTANCE_SECTIONS | {"sam_seg"}),
    ("sam_cls", INSTANCE_SECTIONS | {"sam_cls"}),
    ("finetune", INSTANCE_SECTIONS | {"finetune"}),
])
def test_a_run_saves_only_the_sections_its_method_reads(recipe, own):
    saved = yaml.safe_load(dump_config(parse_config({"recipe": recipe, "name": "x"})))
    assert list(saved)[0] == "recipe"
    assert set(saved) == {"recipe", "name", "run_dir", "seed", "device"} | own
    assert set(METHODS.get(recipe).sections) == own


def test_resume_compares_only_what_the_method_reads(tmp_path):
    """A prompter config rerun as sam_seg carries a `prompter:` section sam_seg ignores: it neither blocks resuming
    nor lands in the saved config; a change to a section the method reads is refused."""
    base = {"recipe": "sam_seg", "run_dir": str(tmp_path / "run"), "train": {"lr": 0.01}}
    prepare_run_dir(parse_config(base))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "prompter" not in saved and saved["train"]["lr"] == 0.01
    prepare_run_dir(parse_config({**base, "prompter": {"head": "anchor"}}))
    with pytest.raises(DistillError, match="holds a run of a different config"):
        prepare_run_dir(parse_config({**base, "train": {"lr": 0.02}}))


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(DistillError, match=r"unknown key 'sam_seg.widht'; valid keys here: width, detections_per_image"):
        parse_config({"recipe": "sam_seg", "sam_seg": {"widht": 64}})
    with pytest.raises(DistillError, match=r"unknown key 'trian'; valid keys here: .*train.*prompter"):
        parse_config({"trian": {}})
