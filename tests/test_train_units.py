"""Pure parts of the trainer: the batch plan, the schedule, the DeepSpeed config, adapter checks."""

from __future__ import annotations

import pytest


def _examples(lengths):
    # labels: first position masked (prompt), the rest trained
    return [{"input_ids": [1] * n, "labels": [-100] + [1] * (n - 1)} for n in lengths]


LENGTHS = [5, 40, 12, 33, 7, 21, 18, 9, 30, 3, 25, 14, 11]


@pytest.mark.parametrize("mode", ["length", "random"])
def test_every_example_once_per_epoch_and_the_order_changes(mode):
    from vichat.train.data import epoch_steps

    units = _examples(LENGTHS)
    e0 = epoch_steps(units, micro=2, accumulation=2, world=1, mode=mode, seed=1, epoch=0)
    e1 = epoch_steps(units, micro=2, accumulation=2, world=1, mode=mode, seed=1, epoch=1)
    for steps in (e0, e1):
        seen = sorted(i for s in steps for b in s.micro_batches for i in b)
        assert seen == list(range(len(units)))
        assert sum(s.label_tokens for s in steps) == sum(n - 1 for n in LENGTHS)
        assert sum(s.input_tokens for s in steps) == sum(LENGTHS)
    assert [s.micro_batches for s in e0] != [s.micro_batches for s in e1]
    assert e0 == epoch_steps(units, micro=2, accumulation=2, world=1, mode=mode, seed=1, epoch=0)  # deterministic


def test_length_grouping_pads_less():
    from vichat.train.data import epoch_steps

    units = _examples(LENGTHS * 4)

    def padded(mode):
        steps = epoch_steps(units, micro=4, accumulation=1, world=1, mode=mode, seed=0, epoch=0)
        return sum(len(b) * max(LENGTHS[i % len(LENGTHS)] for i in b) for s in steps for b in s.micro_batches)

    assert padded("length") < 0.8 * padded("random")


def test_processes_share_each_step_like_one_process_with_more_accumulation():
    from vichat.train.data import epoch_steps, steps_per_epoch

    units = _examples(LENGTHS)
    one = epoch_steps(units, micro=2, accumulation=4, world=1, mode="length", seed=3, epoch=0)
    two = epoch_steps(units, micro=2, accumulation=2, world=2, mode="length", seed=3, epoch=0)
    assert one == two  # the same micro-batches in every step
    assert len(one) == steps_per_epoch(len(units), 2, 2, 2) == 2
    last = two[-1]  # 7 micro-batches: 4 in step 1, 3 in step 2
    r0, r1 = last.for_rank(0, 2), last.for_rank(1, 2)
    assert len(r0) == len(r1) == 2  # the same number of passes everywhere...
    assert r1[-1] is None  # ...process 1 makes a dummy one
    assert sorted(b for b in r0 + r1 if b is not None) == sorted(last.micro_batches)


def test_lr_schedule():
    from vichat.train.model import lr_factor

    f = [lr_factor(s, warmup=4, total=12, kind="linear") for s in range(12)]
    assert f[0] == 0.25 and f[3] == 1.0 and f[4] == 1.0  # the first update is not at lr 0
    assert all(a >= b for a, b in zip(f[3:], f[4:])) and 0 < f[-1] < 0.2
    assert lr_factor(0, warmup=0, total=10, kind="linear") == 1.0
    assert lr_factor(7, warmup=2, total=10, kind="constant") == 1.0
    assert lr_factor(10, warmup=2, total=10, kind="cosine") == pytest.approx(0.0)


def test_plan_batch_sampler_gives_each_process_its_share_and_dummy_passes():
    """What Trainer gets per process: the plan's micro-batches r, r + W, ...; a dummy (labels all -100)
    where a process has none, so both processes make the same number of passes."""
    from vichat.train.data import epoch_steps
    from vichat.train.hf_trainer import PlanBatchSampler, PlanDataset

    units = _examples(LENGTHS)  # 13 units, micro 2: 7 micro-batches; steps of 4 = 2 x 2 processes
    samplers = [PlanBatchSampler(units, micro=2, accumulation=2, world=2, rank=r, mode="length", seed=3)
                for r in range(2)]
    one = PlanBatchSampler(units, micro=2, accumulation=4, world=1, rank=0, mode="length", seed=3)
    for epoch in (0, 1):
        for s in samplers + [one]:
            s.set_epoch(epoch)
        r0, r1 = list(samplers[0]), list(samplers[1])
        assert len(r0) == len(r1) == len(samplers[0]) == len(samplers[1]) == 4
        assert all(i >= len(units) for i in r1[-1])  # process 1's last pass is a dummy
        real = [b for b in r0 + r1 if all(i < len(units) for i in b)]
        assert sorted(map(sorted, real)) == sorted(map(sorted, list(one)))  # the same micro-batches as 1 process
        steps = epoch_steps(units, micro=2, accumulation=2, world=2, mode="length", seed=3, epoch=epoch)
        assert r0[:2] + r1[:2] == [list(b) for b in steps[0].micro_batches[0::2]] + \
            [list(b) for b in steps[0].micro_batches[1::2]]
    dataset = PlanDataset(units)
    assert dataset[len(units) + 1]["labels"] == [-100] * LENGTHS[1] and dataset[1]["labels"] == units[1]["labels"]


def test_verify_adapter_refuses_empty_and_untrained_adapters(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vichat.train.adapter import EmptyAdapterError, verify_adapter

    key_a, key_b = "base_model.model.h.0.qkv.lora_A.weight", "base_model.model.h.0.qkv.lora_B.weight"
    expected = {key_a: (8, 16), key_b: (48, 8)}
    (tmp_path / "adapter_config.json").write_text("{}")

    def write(tensors):
        save_file(tensors, str(tmp_path / "adapter_model.safetensors"))

    write({key_a: torch.randn(8, 16), key_b: torch.randn(48, 8)})
    assert verify_adapter(tmp_path, expected, steps_done=5)["parameters"] == 8 * 16 + 48 * 8
    write({key_a: torch.randn(8, 16), key_b: torch.zeros(48, 8)})
    verify_adapter(tmp_path, expected, steps_done=0)  # before any step, lora_B is zero by design
    with pytest.raises(EmptyAdapterError, match="every lora_B weight is zero"):
        verify_adapter(tmp_path, expected, steps_done=5)
    write({key_a: torch.empty(0), key_b: torch.empty(0)})  # what ZeRO-3 without gathering saves
    with pytest.raises(EmptyAdapterError, match="peft #2892"):
        verify_adapter(tmp_path, expected, steps_done=5)
    write({key_a: torch.randn(8, 16)})
    with pytest.raises(EmptyAdapterError, match="1 of 2 LoRA tensors missing"):
        verify_adapter(tmp_path, expected, steps_done=5)
