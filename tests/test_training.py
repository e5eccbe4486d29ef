"""The one training loop: schedule, sampler, metrics, gradient accumulation, bit-for-bit resume of every
method's objective, refusals of foreign states, and DDP (gloo, two CPU processes) for distillation and an
instance head."""
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
from sam_distill.train.loop import DistillationObjective, EpochSampler, Schedule, lr_lambda, train
from sam_distill.train.prompt_loop import PromptLoopObjective

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
    summary = train(DistillationObjective(_student()), dataset, _schedule(epochs=4, lr=3e-3), tmp_path, DistContext(),
                    log=lambda m: None)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert summary["steps"] == 12 == len(rows)
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 12 and state["format"] == "sam-distill/train-state" and state["objective"] == "distill"


class _PoisonedSteps(DistillationObjective):
    """The distillation objective with a NaN loss on the chosen (1-based) steps, as one overflowing batch gives."""

    def __init__(self, model, poisoned: set[int]):
        super().__init__(model)
        self.poisoned, self.calls = poisoned, 0

    def losses(self, model, batch):
        self.calls += 1
        losses = super().losses(model, batch)
        return {k: v * float("nan") for k, v in losses.items()} if self.calls in self.poisoned else losses


def test_a_non_finite_step_is_skipped_and_a_diverged_run_stops_in_one_line(tiny_cache, tmp_path, monkeypatch):
    import sam_distill.train.loop as loop

    dataset, lines = DistillDataset(EmbeddingCache(tiny_cache)), []
    objective = _PoisonedSteps(_student(), poisoned={3})
    train(objective, dataset, _schedule(epochs=4, lr=3e-3, amp=False), tmp_path / "one", log=lines.append)
    assert [line for line in lines if "non-finite" in line] == [
        "train: step 3: non-finite loss or gradient (nan); step skipped, the weights are left as they were"]
    assert all(torch.isfinite(p).all() for p in objective.model.parameters())
    rows = read_metrics(tmp_path / "one" / "metrics.csv")
    assert len(rows) == 12 and all(r["loss"] == r["loss"] for r in rows if r["step"] != 3)  # NaN only where skipped
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8  # it went on learning

    monkeypatch.setattr(loop, "MAX_NONFINITE_STEPS_IN_A_ROW", 3)
    objective = _PoisonedSteps(_student(), poisoned=set(range(5, 100)))
    with pytest.raises(DistillError, match="training diverged: 3 steps in a row up to step 7 had a non-finite"):
        train(objective, dataset, _schedule(epochs=4, lr=3e-3, amp=False, checkpoint_every=4), tmp_path / "many",
              log=lambda line: None)
    assert torch.load(tmp_path / "many" / "last.pt", weights_only=True)["step"] == 4  # the finished work is kept


def test_gradient_accumulation_matches_a_larger_batch(tiny_cache, tmp_path, monkeypatch):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    seen = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    # A LayerNorm student: with BatchNorm, two batches of one are not one batch of two.
    train(DistillationObjective(_student(name="timm_test_vit")), dataset,
          _schedule(epochs=1, max_steps=1, batch_size=2), tmp_path / "a", DistContext(), log=print)
    train(DistillationObjective(_student(name="timm_test_vit")), dataset,
          _schedule(epochs=1, max_steps=1, batch_size=1, grad_accum=2), tmp_path / "b", DistContext(), log=print)
    assert len(seen) == 2
    for big, accumulated in zip(*seen):
        assert torch.allclose(big, accumulated, rtol=1e-4, atol=1e-7)


def test_too_few_images_for_the_batch_is_one_line(tiny_cache, tmp_path):
    dataset = DistillDataset(EmbeddingCache(tiny_cache), indices=[0])
    with pytest.raises(DistillError, match="only 1 training images for batch_size 2"):
        train(DistillationObjective(_student()), dataset, _schedule(), tmp_path, DistContext())


def test_prompt_loop_loss_trains_only_the_student(tiny_teacher, tiny_cache):
    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    batch = tuple(t[None] for t in dataset[0])
    teacher = copy.deepcopy(tiny_teacher)
    teacher_sam = teacher.model
    student = _student()
    objective = PromptLoopObjective(student, teacher, prompts_per_image=4, refine_iterations=1, seed=0)
    loss = sum(objective.losses(student, batch).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher_sam.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    # A student that *is* the teacher's encoder scores better than a random one.
    with torch.no_grad():
        perfect = sum(objective.losses(copy.deepcopy(tiny_teacher.model.image_encoder), batch).values())
        random_loss = sum(PromptLoopObjective(student, teacher, 4, 1, seed=0).losses(student, batch).values())
    assert perfect < random_loss


def test_ddp_training_under_torchrun(tiny_cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sam_distill", "train", str(tiny_cache), "--student", STUDENT, "--out", str(tmp_path),
               "--max-steps", "2", "--batch-size", "1", "--warmup-steps", "0", "--checkpoint-every", "1", "--log-every", "1",
               "--holdout", "0", "--workers", "0", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert len(read_metrics(tmp_path / "metrics.csv")) == 2


# ---------------------------------------------------------------------------------------------
# Every method's objective in the one loop: a killed run resumes bit for bit

INSTANCE_SIZE = 128


def _quiet(message):
    pass


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from sam_distill.data.coco import make_synthetic_coco

    folder = tmp_path_factory.mktemp("train_shapes")
    make_synthetic_coco(folder, 6, INSTANCE_SIZE, seed=0)
    return folder / "annotations.json", folder / "images"


def _instance_model(kind: str):
    """A small instance model on a frozen random 128-px vit_tiny: RSPrompter heads, SAM-seg, SAM-det (its
    decoder trained, so trainable parts of SAM are in the state too)."""
    torch.manual_seed(0)
    if kind.startswith("prompter"):
        from sam_distill.methods.prompter.model import build_prompter

        return build_prompter({"encoder": "vit_tiny", "image_size": INSTANCE_SIZE, "head": kind.split("_")[1],
                               "num_classes": 3, "width": 32,
                               "head_kwargs": {"num_queries": 8, "decoder_layers": 2, "pixel_decoder_layers": 1, "heads": 4}})
    from sam_distill.methods.rcnn.model import build_rcnn

    return build_rcnn({"method": kind, "encoder": "vit_tiny", "image_size": INSTANCE_SIZE, "num_classes": 3,
                       "width": 32, "train_decoder": kind == "sam_det"})


def _case(name: str, shapes, tiny_teacher, tiny_cache):
    """(fresh objective maker, dataset, schedule overrides) of one method; every case has ≥ 2 steps per epoch,
    so a resume lands mid-epoch or on an epoch boundary."""
    if name in ("distill", "prompt_loop"):
        dataset = DistillDataset(EmbeddingCache(tiny_cache))
        if name == "distill":  # 6 images, 3 steps of 1 × 2 accumulated
            return lambda: DistillationObjective(_student()), dataset, {"batch_size": 1, "grad_accum": 2}
        return (lambda: PromptLoopObjective(_student(), copy.deepcopy(tiny_teacher), 2, 1, seed=0),
                dataset, {"batch_size": 2})
    if name == "sam_cls":
        from torch.utils.data import TensorDataset

        from sam_distill.methods.sam_cls.recipe import ClassifierObjective
        from sam_distill.students.heads.mask_classifier import MaskClassifier

        generator = torch.Generator().manual_seed(0)
        dataset = TensorDataset(torch.randn(40, 260, generator=generator),
                                torch.randint(0, 4, (40,), generator=generator))

        def classifier():
            torch.manual_seed(0)
            return ClassifierObjective(MaskClassifier(3))

        return classifier, dataset, {"batch_size": 16}
    from sam_distill.data.coco import CocoInstances
    from sam_distill.methods.instances import InstanceObjective

    dataset = CocoInstances(*shapes, INSTANCE_SIZE, augment=True)  # the augmentation draws from torch's generator
    return lambda: InstanceObjective(_instance_model(name), name), dataset, {"batch_size": 2}


def _comparable_rows(path):
    """metrics.csv rows without the timing columns."""
    return [{k: v for k, v in row.items() if not k.endswith("_per_s") and k != "seconds"} for row in read_metrics(path)]


@pytest.mark.parametrize("name", ["distill", "prompt_loop", "prompter_query", "prompter_anchor", "sam_seg", "sam_det",
                                  "sam_cls"])
def test_every_objective_resumes_bit_for_bit(name, shapes, tiny_teacher, tiny_cache, tmp_path):
    make, dataset, overrides = _case(name, shapes, tiny_teacher, tiny_cache)
    # Checkpoints at 2 and 4, metrics rows at 3 and 5: the resumed run's row 5 averages a step it did not take.
    schedule = _schedule(epochs=3, max_steps=5, checkpoint_every=2, log_every=3, **overrides)
    straight = make()
    torch.manual_seed(7)
    train(straight, dataset, schedule, tmp_path / "straight", seed=3, log=_quiet)

    killed, calls = make(), []
    losses = killed.losses

    def dies_in_step_5(model, batch):
        calls.append(1)
        if len(calls) > 4 * schedule.grad_accum:
            raise _Interrupt
        return losses(model, batch)

    killed.losses = dies_in_step_5
    torch.manual_seed(7)
    with pytest.raises(_Interrupt):
        train(killed, dataset, schedule, tmp_path / "resumed", seed=3, log=_quiet)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 4

    resumed, messages = make(), []  # a new model, as in a fresh process
    with torch.no_grad():  # other trained weights and another random stream: all must come from the checkpoint
        for value in resumed.trainable_state().values():
            if value.is_floating_point():
                value.add_(0.5)
    torch.manual_seed(123)
    train(resumed, dataset, schedule, tmp_path / "resumed", seed=3, log=messages.append)
    assert any("resumed" in m and "step 4/5" in m for m in messages)
    expected, got = straight.trainable_state(), resumed.trainable_state()
    assert list(expected) == list(got)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    rows = _comparable_rows(tmp_path / "straight" / "metrics.csv")
    assert [row["step"] for row in rows] == [3, 5]
    assert _comparable_rows(tmp_path / "resumed" / "metrics.csv") == rows


def test_a_foreign_state_is_refused_in_one_line(tiny_teacher, tiny_cache, shapes, tmp_path):
    from sam_distill.data.coco import CocoInstances
    from sam_distill.methods.instances import InstanceObjective

    dataset = DistillDataset(EmbeddingCache(tiny_cache))
    schedule = _schedule(max_steps=1)
    train(DistillationObjective(_student()), dataset, schedule, tmp_path / "distill", log=_quiet)
    with pytest.raises(DistillError, match=r"distill/last\.pt holds a training state of distill, not of prompt_loop; "
                                           r"delete it to start over$"):
        train(PromptLoopObjective(_student(), copy.deepcopy(tiny_teacher)), dataset, schedule,
              tmp_path / "distill", log=_quiet)
    with pytest.raises(DistillError, match=r"distill/last\.pt was saved with other trainable parts"):
        train(DistillationObjective(_student(name="timm_test_vit")), dataset, schedule, tmp_path / "distill")

    shapes_set = CocoInstances(*shapes, INSTANCE_SIZE)
    model = _instance_model("sam_det")  # its decoder trains
    train(InstanceObjective(model, "sam_det"), shapes_set, schedule, tmp_path / "det", log=_quiet)
    frozen_decoder = _instance_model("sam_seg")
    with pytest.raises(DistillError, match="holds a training state of instances/sam_det, not of instances/sam_seg"):
        train(InstanceObjective(frozen_decoder, "sam_seg"), shapes_set, schedule, tmp_path / "det")
    model.train_decoder = False  # the same method with a frozen decoder: other trainable parts
    model.sam.mask_decoder.requires_grad_(False)
    with pytest.raises(DistillError, match=r"det/last\.pt was saved with other trainable parts; delete it"):
        train(InstanceObjective(model, "sam_det"), shapes_set, schedule, tmp_path / "det")

    (tmp_path / "old").mkdir()
    torch.save({"format": "sam-distill/instance-train-state", "model": {}}, tmp_path / "old" / "last.pt")
    with pytest.raises(DistillError, match=r"old/last\.pt is not a training state of this toolkit; delete it"):
        train(DistillationObjective(_student()), dataset, schedule, tmp_path / "old")


# ---------------------------------------------------------------------------------------------
# DDP: two gloo processes on the CPU run the same loop


class _Recording(torch.utils.data.Dataset):
    """A dataset that remembers which of its samples this process read."""

    def __init__(self, dataset):
        self.dataset, self.seen = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.seen.append(index)
        return self.dataset[index]


def _ddp_schedule():
    return _schedule(epochs=1, batch_size=1, max_steps=3, checkpoint_every=10)


def _ddp_distill(context, cache_dir, out):
    dataset = _Recording(DistillDataset(EmbeddingCache(cache_dir)))
    objective = DistillationObjective(_student(name="timm_test_vit"))  # LayerNorm: batches split across ranks add up
    train(objective, dataset, _ddp_schedule(), out, context, log=_quiet)
    torch.save({"seen": dataset.seen, "weights": objective.trainable_state()}, out / f"rank{context.rank}.pt")


def _ddp_instances(context, annotations, images, out):
    from sam_distill.data.coco import CocoInstances
    from sam_distill.methods.instances import InstanceObjective

    dataset = _Recording(CocoInstances(annotations, images, INSTANCE_SIZE, augment=True))

    def evaluate():
        with open(out / f"evaluations-rank{context.rank}.txt", "a") as f:
            f.write("evaluated\n")
        return {"mask_AP": 0.25, "mask_AP50": 0.5, "box_AP50": 0.75}

    objective = InstanceObjective(_instance_model("prompter_query"), "prompter", evaluate, eval_every=2)
    train(objective, dataset, _ddp_schedule(), out, context, log=_quiet)
    torch.save({"seen": dataset.seen, "weights": objective.trainable_state()}, out / f"rank{context.rank}.pt")


def _ddp_worker(rank, world_size, store, jobs):
    import torch.distributed as torch_dist

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        context = DistContext(rank, world_size, rank, torch.device("cpu"))
        for job, args in jobs:
            job(context, *args)
    finally:
        torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tiny_cache, shapes, tmp_path_factory):
    """One distillation run and one instance-head run, both on two gloo processes."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = [(_ddp_distill, (tiny_cache, root / "distill")), (_ddp_instances, (*shapes, root / "instances"))]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(root / "store"), jobs), nprocs=2, join=True)
    return root


def _rank_results(out):
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    state = torch.load(out / "last.pt", weights_only=True)
    return ranks, state


def _assert_ranks_split_the_data_and_end_equal(out, size):
    ranks, state = _rank_results(out)
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 3
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(size))  # disjoint halves of the epoch
    assert state["step"] == 3 and len(state["ranks"]) == 2
    for key, value in state["model"].items():  # rank 0's checkpoint is the model every rank ends with
        assert torch.equal(value, ranks[0]["weights"][key]) and torch.equal(value, ranks[1]["weights"][key]), key
    return state


def test_ddp_distillation_equals_one_process_taking_both_ranks_batches(ddp_runs, tiny_cache, tmp_path):
    state = _assert_ranks_split_the_data_and_end_equal(ddp_runs / "distill", 6)
    # DDP averages the ranks' gradients, and rank r reads samples r, r+2, ... of the epoch's order: one process
    # with batches of two takes the same steps.
    reference = DistillationObjective(_student(name="timm_test_vit"))
    train(reference, DistillDataset(EmbeddingCache(tiny_cache)), _schedule(epochs=1, batch_size=2, max_steps=3,
                                                                            checkpoint_every=10), tmp_path, log=_quiet)
    # The sums round differently; AdamW's normalised steps (5e-4 here) carry that into the weights up to ~1e-5.
    for key, value in reference.trainable_state().items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=5e-5)
    distributed, single = read_metrics(ddp_runs / "distill" / "metrics.csv"), read_metrics(tmp_path / "metrics.csv")
    assert [r["loss"] for r in distributed] == pytest.approx([r["loss"] for r in single], rel=1e-4)  # all ranks' mean


def test_ddp_instance_head_evaluates_on_rank_0_only(ddp_runs):
    from sam_distill.methods.instances import InstanceObjective

    out = ddp_runs / "instances"
    state = _assert_ranks_split_the_data_and_end_equal(out, 6)
    fresh = InstanceObjective(_instance_model("prompter_query"), "prompter").trainable_state()
    assert any(not torch.equal(value, fresh[key]) for key, value in state["model"].items())  # it trained
    assert (out / "evaluations-rank0.txt").read_text().count("evaluated") == 2  # steps 2 and 3 (the end)
    assert not (out / "evaluations-rank1.txt").exists()
    assert [row["step"] for row in read_metrics(out / "ap.csv")] == [2, 3]
    assert (out / "ap_curve.png").is_file()


def test_instance_recipe_runs_under_torchrun(tmp_path):
    config = tmp_path / "prompter.yaml"
    config.write_text(
        f"recipe: prompter\nname: ddp\nrun_dir: {tmp_path / 'run'}\ndevice: cpu\n"
        "train: {max_steps: 2, batch_size: 1, warmup_steps: 0, checkpoint_every: 1, log_every: 1, num_workers: 0}\n"
        f"encoder: {{name: vit_tiny, image_size: {INSTANCE_SIZE}}}\nprompter: {{head: query, width: 32, decoder_layers: 2, pixel_decoder_layers: 1}}\n"
        "instances: {synthetic: {count: 8, size: 128}, val_fraction: 0.3, eval: {every: 1, overlays: 0}}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sam_distill", "run", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "model" / "prompter.pt").is_file() and (run / "reports" / "ap.json").is_file()
    assert [row["step"] for row in read_metrics(run / "checkpoints" / "prompter" / "ap.csv")] == [1, 2]
    log = (run / "logs" / "run.log").read_text()
    assert log.count("prompter: on vit_tiny") == 1 and "2 processes" in log  # one log, written by rank 0
    assert len(torch.load(run / "checkpoints" / "prompter" / "last.pt", weights_only=True)["ranks"]) == 2


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_bf16_autocasts_only_where_the_cpu_computes_bf16(native_bf16, tiny_cache, tmp_path, monkeypatch):
    """``cpu_bf16`` trains under bf16 autocast with channels-last convolutions on a CPU with native bf16, and
    says so; on one without, it trains in fp32 and says why, instead of emulating bf16 slowly."""
    import sam_distill.train.loop as loop

    monkeypatch.setattr(loop, "cpu_computes_bf16", lambda: native_bf16)
    objective = DistillationObjective(_student())
    seen = []
    losses = objective.losses

    def recording(model, batch):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return losses(model, batch)

    monkeypatch.setattr(objective, "losses", recording)
    messages = []
    summary = train(objective, DistillDataset(EmbeddingCache(tiny_cache)), _schedule(epochs=4, lr=3e-3,
                    cpu_bf16=True), tmp_path, DistContext(), log=messages.append)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert summary["steps"] == len(rows) == len(seen) == 12 and set(seen) == {native_bf16}
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8
    convolutions = [m.weight for m in objective.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions) == native_bf16
    expected = "bf16 autocast on this CPU" if native_bf16 else "this CPU has no native bf16"
    assert any(expected in m for m in messages), messages
