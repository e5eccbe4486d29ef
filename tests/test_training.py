import copy
import os
import subprocess
import sys

import pytest
import torch

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.rundir import read_metrics
from sam_distill.data.cache import DistillDataset, EmbeddingCache
from sam_distill.students import create_student
from sam_distill.train.loop import EpochSampler, Schedule, embedding_mse, lr_lambda, run_training
from sam_distill.train.prompt_loop import PromptLoopLoss

STUDENT = "timm_test_efficientnet"


def _schedule(**overrides):
    values = dict(epochs=2, batch_size=2, grad_accum=1, lr=1e-3, min_lr=1e-5, weight_decay=0.05, warmup_steps=1,
                  checkpoint_every=2, log_every=1, amp=True)
    values.update(overrides)
    return Schedule(**values)


def _student(seed=0, name=STUDENT):
    torch.manual_seed(seed)
    return create_student(name, image_size=256)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factor = lr_lambda(_schedule(warmup_steps=4, lr=1e-3, min_lr=1e-5), total_steps=20)
    values = [factor(s) for s in range(21)]
    assert values[0] < values[1] < values[3] < values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[20] == pytest.approx(0.01)


def test_epoch_sampler_partitions_and_skips():
    a = EpochSampler(10, seed=1, epoch=0, rank=0, world_size=2).indices
    b = EpochSampler(10, seed=1, epoch=0, rank=1, world_size=2).indices
    assert sorted(a + b) == list(range(10))
    assert EpochSampler(10, 1, 0, 0, 2, skip=2).indices == a[2:]
    assert EpochSampler(10, 1, 1, 0, 1).indices != EpochSampler(10, 1, 0, 0, 1).indices


def test_training_reduces_loss_and_writes_metrics(tiny_cache, tmp_path):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    summary = run_training(_student(), dataset, _schedule(epochs=4, lr=3e-3), tmp_path, DistContext(), log=lambda m: None)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert summary["steps"] == 12 == len(rows)
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 12 and state["format"] == "sam-distill/train-state"


class _Interrupt(Exception):
    pass


def test_resume_continues_bit_for_bit(tiny_cache, tmp_path):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    straight = _student()
    run_training(straight, dataset, _schedule(), tmp_path / "straight", DistContext(), log=lambda m: None)

    calls = {"n": 0}

    def dies_after_two_steps(model, images, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupt
        return embedding_mse(model, images, targets)

    with pytest.raises(_Interrupt):
        run_training(_student(), dataset, _schedule(), tmp_path / "resumed", DistContext(),
                     loss_fn=dies_after_two_steps, log=lambda m: None)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 2
    resumed = _student(seed=123)  # different init: everything must come from the checkpoint
    run_training(resumed, dataset, _schedule(), tmp_path / "resumed", DistContext(), log=lambda m: None)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.csv")] == [1, 2, 3, 4, 5, 6]


def test_gradient_accumulation_matches_a_larger_batch(tiny_cache, tmp_path, monkeypatch):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    seen = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    # A LayerNorm student: with BatchNorm, two batches of one are not one batch of two.
    run_training(_student(name="timm_test_vit"), dataset, _schedule(epochs=1, max_steps=1, batch_size=2),
                 tmp_path / "a", DistContext(), log=print)
    run_training(_student(name="timm_test_vit"), dataset, _schedule(epochs=1, max_steps=1, batch_size=1, grad_accum=2),
                 tmp_path / "b", DistContext(), log=print)
    assert len(seen) == 2
    for big, accumulated in zip(*seen):
        assert torch.allclose(big, accumulated, rtol=1e-4, atol=1e-7)


def test_too_few_images_for_the_batch_is_one_line(tiny_cache, tmp_path):
    dataset = DistillDataset(EmbeddingCache(tiny_cache), indices=[0])
    with pytest.raises(DistillError, match="only 1 training images for batch_size 2"):
        run_training(_student(), dataset, _schedule(), tmp_path, DistContext())


def test_prompt_loop_loss_trains_only_the_student(tiny_teacher, tiny_cache):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    images, targets = (t[None] for t in dataset[0])
    teacher_sam = copy.deepcopy(tiny_teacher.model)
    loss_fn = PromptLoopLoss(teacher_sam, prompts_per_image=4, refine_iterations=1, seed=0)
    student = _student()
    loss = loss_fn(student, images, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher_sam.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    # A student that *is* the teacher's encoder scores better than a random one.
    with torch.no_grad():
        perfect = loss_fn(copy.deepcopy(tiny_teacher.model.image_encoder), images, targets)
        random_loss = PromptLoopLoss(teacher_sam, 4, 1, seed=0)(student, images, targets)
    assert perfect < random_loss


def test_ddp_training_under_torchrun(tiny_cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
               "-m", "sam_distill", "train", str(tiny_cache), "--student", STUDENT, "--out", str(tmp_path),
               "--max-steps", "2", "--batch-size", "1", "--warmup-steps", "0", "--checkpoint-every", "1", "--log-every", "1",
               "--holdout", "0", "--workers", "0", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert len(read_metrics(tmp_path / "metrics.csv")) == 2
