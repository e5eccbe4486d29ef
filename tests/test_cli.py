import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from sam_distill.cli import main
from sam_distill.methods.config import load_config


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def _one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_nonexistent_and_empty_image_folders(tmp_path, tiny_teacher_checkpoint, capsys):
    base = ["embed", "--out", str(tmp_path / "c"), "--teacher", "vit_tiny", "--checkpoint", str(tiny_teacher_checkpoint)]
    _one_line_error(*_run([*base, str(tmp_path / "missing")], capsys), "missing", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(*_run([*base, str(tmp_path / "empty")], capsys), "empty", "holds no images")


def test_wrong_checkpoint(tmp_path, image_folder, capsys):
    bogus = tmp_path / "bogus.pth"
    torch.save({"weight": torch.zeros(2)}, bogus)
    code, err = _run(["embed", str(image_folder), "--out", str(tmp_path / "c"), "--teacher", "vit_b",
                      "--checkpoint", str(bogus)], capsys)
    _one_line_error(code, err, "bogus.pth", "not a SAM checkpoint")


def test_config_typo_names_the_valid_keys(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("recipe: mobilesam\ntrain:\n  epohcs: 3\n")
    _one_line_error(*_run(["run", str(config)], capsys), "c.yaml", "train.epohcs", "epochs")
    config.write_text("train: [1, 2\n")
    _one_line_error(*_run(["run", str(config)], capsys), "not valid YAML", "line")
    _one_line_error(*_run(["run", str(tmp_path / "none.yaml")], capsys), "none.yaml", "does not exist")


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sam_distill", "--debug", "run", str(tmp_path / "none.yaml")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = subprocess.run([sys.executable, "-m", "sam_distill", "run", str(tmp_path / "none.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_shipped_configs_parse():
    for name in ("quickstart", "mobilesam", "nwpu_benchmark"):
        config = load_config(f"configs/{name}.yaml")
        assert config.recipe == "mobilesam"
    assert load_config("configs/mobilesam.yaml").teacher.name == "sam_vit_h"
    for path in sorted(Path("configs").glob("*.yaml")):  # every shipped config is valid as it stands
        load_config(path)
    student = load_config("configs/chain_nwpu_student.yaml")
    assert (student.data.split, student.teacher.name) == ("train", load_config(
        "configs/chain_nwpu_teacher.yaml").encoder.name)


def _small_run_config(tmp_path, tiny_teacher_checkpoint):
    return {
        "recipe": "mobilesam", "name": "small", "run_dir": str(tmp_path / "run"), "seed": 0,
        "teacher": {"name": "vit_tiny", "checkpoint": str(tiny_teacher_checkpoint)},
        "data": {"synthetic": {"count": 5, "size": 96}, "holdout_fraction": 0.2},
        "cache": {"shard_size": 2},
        "student": {"name": "timm_test_efficientnet"},
        "train": {"epochs": 1, "batch_size": 2, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1,
                  "num_workers": 0},
        "prompt_stage": {"enabled": True, "max_steps": 1, "batch_size": 1, "prompts_per_image": 2},
        "fidelity": {"points_per_image": 2},
    }


def test_distill_run_end_to_end_then_resume_and_refuse_a_changed_config(tmp_path, tiny_teacher_checkpoint, capsys):
    config = _small_run_config(tmp_path, tiny_teacher_checkpoint)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    for relative in ("config.yaml", "logs/run.log", "cache/manifest.jsonl", "checkpoints/distill/metrics.csv",
                     "checkpoints/prompt/last.pt", "model/model.pt", "reports/fidelity.json"):
        assert (run / relative).exists(), relative
    fidelity = json.loads((run / "reports" / "fidelity.json").read_text())
    assert fidelity["images"] == 1 and 0 <= fidelity["summary"]["point_miou"] <= 1
    from sam_distill.sam.model_file import load_model

    teacher_decoder = load_model(tiny_teacher_checkpoint)[0].mask_decoder.state_dict()
    student_decoder = load_model(run / "model" / "model.pt")[0].mask_decoder.state_dict()
    assert all(torch.equal(value, student_decoder[key]) for key, value in teacher_decoder.items())  # frozen, copied
    before = (run / "model" / "model.pt").stat().st_mtime_ns
    # A rerun resumes: nothing is re-embedded or retrained.
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 already cached, 0 to do" in out and "resumed" in out
    assert (run / "model" / "model.pt").stat().st_mtime_ns >= before
    code, err = _run(["run", str(path), "--set", "train.lr=0.5"], capsys)
    _one_line_error(code, err, "different config")


def test_a_convnet_teacher_teaches_at_the_image_size_its_config_sets(tmp_path, convnet_sam_file):
    """``teacher.image_size`` runs a ConvNet teacher's file (trained at 128 px) at 64: its embeddings are cached
    at 64, the student is made at 64, and the run's report times the teacher at 64, beside that student."""
    from sam_distill.sam.model_file import load_model

    config = _small_run_config(tmp_path, convnet_sam_file)
    config["teacher"] = {"name": "timm_test_efficientnet", "checkpoint": str(convnet_sam_file), "image_size": 64}
    config["prompt_stage"]["enabled"] = False
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "cache" / "cache.json").read_text())["preprocessing"]["image_size"] == 64
    assert load_model(run / "model" / "model.pt")[1].image_size == 64
    rows = json.loads((run / "reports" / "bench.json").read_text())["rows"]
    assert {row["role"]: row["image_size"] for row in rows} == {"teacher": 64, "student": 64}


def test_prompt_stage_alone_starts_from_the_distilled_student(tmp_path, tiny_teacher, tiny_teacher_checkpoint,
                                                              capsys):
    """EdgeSAM's second phase as a run of its own: no decoupled stage, one prompt-stage step from student.init;
    with prompt_stage.train_decoder the step moves the student's own decoder too, and model.pt ships it."""
    from sam_distill.methods.mobilesam.stages import init_student, write_models
    from sam_distill.sam.model_file import load_model

    torch.manual_seed(1)  # a student model file as a first run would write it, without the run
    student = init_student("timm_test_efficientnet", tiny_teacher.image_size, None, tiny_teacher)
    distilled = Path(write_models(student, "timm_test_efficientnet", tiny_teacher, tmp_path / "a", {})["model"])

    second = _small_run_config(tmp_path / "b", tiny_teacher_checkpoint)
    second["prompt_stage"]["only"] = True
    second["fidelity"] = {"enabled": False}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(second))
    _one_line_error(*_run(["run", str(tmp_path / "b.yaml")], capsys), "prompt_stage.only", "student.init")
    assert not (tmp_path / "b" / "run").exists()  # refused before the run folder is made: the fixed config may run
    second["student"]["init"] = str(distilled)
    second["prompt_stage"]["train_decoder"] = True
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(second))
    assert main(["run", str(tmp_path / "b.yaml")]) == 0
    run = tmp_path / "b" / "run"
    assert not (run / "checkpoints" / "distill").exists() and (run / "checkpoints" / "prompt" / "last.pt").exists()
    before = load_model(distilled)[0]

    def largest_move(part):
        start, after = dict(getattr(before, part).named_parameters()), load_model(run / "model" / "model.pt")[0]
        return max(float((value - start[key]).detach().abs().max())
                   for key, value in getattr(after, part).named_parameters())

    # One AdamW step at 1e-4 away from the distilled student, not from random weights; the decoder, the
    # teacher's copy, moved as well, the prompt encoder did not.
    assert 0 < largest_move("image_encoder") < 1e-2
    assert 0 < largest_move("mask_decoder") < 1e-2
    assert largest_move("prompt_encoder") == 0
    assert main(["run", str(tmp_path / "b.yaml")]) == 0  # resumes from the state that holds the decoder
    assert "resumed" in capsys.readouterr().out
    assert largest_move("mask_decoder") > 0


def test_a_pickled_model_file_is_named_before_it_is_loaded(tmp_path, capsys):
    """An ultralytics file can only be unpickled, which runs code from it: the toolkit says so, once per file."""
    from ultralytics.utils import IterableSimpleNamespace

    from sam_distill.core.model_files import identify

    path = tmp_path / "student.pt"
    torch.save({"model": IterableSimpleNamespace(task="segment")}, path)
    assert identify(path).name == "yolo_seg"
    assert identify(path).name == "yolo_seg"
    err = capsys.readouterr().err
    assert err.count("runs code stored in the file") == 1 and "student.pt" in err and "ultralytics" in err
