"""``distill run CONFIG``: one recipe, end to end, in one run folder; rerunning resumes it."""
from __future__ import annotations

import time

import yaml

from sam_distill.core.config import RunConfigBase
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_text
from sam_distill.core.rundir import RunDir
from sam_distill.eval.report import report_run
from sam_distill.methods.config import dump_config, method_of, own_part, parse_config


def prepare_run_dir(config: RunConfigBase) -> RunDir:
    """Create the run folder, or reopen it when it holds a run of the same config (resume).

    Only what the method reads is compared (and saved): a saved config that predates a new default, or a
    section of another method in the new config, still matches.
    """
    run_dir = RunDir(config.resolved_run_dir())
    saved = run_dir.path / "config.yaml"
    if saved.exists() and own_part(parse_config(yaml.safe_load(saved.read_text()) or {}, str(saved))) != own_part(config):
        raise DistillError(
            f"run folder {run_dir.path} holds a run of a different config; give this run another name "
            f"(name: or run_dir:) or delete that folder"
        )
    atomic_write_text(saved, dump_config(config))
    return run_dir


def run(config: RunConfigBase) -> RunDir:
    method = method_of(config)
    if method.check is not None:
        method.check(config)
    run_dir = prepare_run_dir(config)
    started = time.time()
    run_dir.log(f"run: recipe {config.recipe} in {run_dir.path}")
    method.run(config, run_dir)
    report_run(run_dir.path, config, log=run_dir.log)
    run_dir.log(f"run: finished in {time.time() - started:.0f} s; everything is in {run_dir.path}")
    return run_dir
