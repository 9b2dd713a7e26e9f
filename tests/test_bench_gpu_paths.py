"""The GPU benchmarks' code, run on the CPU: ``bench/train.py --gpu --smoke`` end to end, the
in-process path of ``bench/memory.py`` (what ``--cuda`` runs) on one small case, the CUDA case
list, the checkpointing choice and the throughput / FLOP arithmetic. A GPU gets one short chance
to run these benchmarks: a crash there must have shown up here first."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from conftest_train import PY, REPO, one_thread, subprocess_env  # noqa: F401 (fixture)

BENCH = REPO / "bench"


@pytest.fixture
def bench_path(monkeypatch):
    """bench/ importable (its modules import each other by plain name, as when run as scripts)."""
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in ("train", "train_gpu", "devices"):
        sys.modules.pop(name, None)


def _load_memory_bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_train_bench_smoke_runs_end_to_end(shared_data, tmp_path):
    import subprocess

    out = tmp_path / "train.json"
    env = subprocess_env(tmp_path)
    env["VICHAT_SHARED_DATA"] = str(shared_data)
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([PY, "bench/train.py", "--gpu", "--smoke", "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["device"] == "cpu"
    assert doc["checkpointing"]["on"] is False and doc["checkpointing"]["reason"].startswith("auto:")
    assert doc["loss"]["vichat"] == "chunked"  # auto on a CPU
    tokens = doc["data"]["tokens"]
    for name in ("vichat", "peer"):
        row = doc["rows"][name]
        assert row["tokens_per_second"] > 0
        assert row["finite"] and all(math.isfinite(x) for x in row["losses"]) and math.isfinite(row["val_loss"])
        assert row["all_tokens"] == tokens  # every record trained once, counted by the same rule on both sides
        assert row["steps"] == 4 and row["timed_steps"] == 3  # 32 records / batch 8; the first step left out
        assert row["timed_tokens"] < tokens and row["first_step_seconds"] > 0
        assert row["peak_bytes"] > 0 and row["mfu"] is None and row["mfu_executed"] is None  # no MFU on a CPU
    planner = doc["planner"]
    assert planner["predicted_bytes"] > planner["predicted_no_margin_bytes"] > 0
    assert planner["measured_bytes"] > 0 and planner["error"] is not None
    assert doc["ratio"] > 0
    text = proc.stdout
    for expected in ("vichat (chunked loss)", "Trainer + peft peer", "gradient checkpointing off", "planner for",
                     "MFU", "n/a", "1st step s"):
        assert expected in text, expected


def test_memory_bench_in_process_path_on_one_case(tmp_path):
    import subprocess

    out = tmp_path / "memory.json"
    env = subprocess_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    label = "bloom-V250880-s512 fp32 chunked no-ckpt"
    proc = subprocess.run([PY, "bench/memory.py", "--in-process", "--only", label, "--json", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["in_process"] is True and doc["failed"] == [] and doc["skipped"] == []
    (row,) = doc["rows"]
    assert row["case"]["loss"] == "chunked" and row["case"]["checkpointing"] is False
    # the in-process resident-memory deltas agree with the planner as the per-process ones do
    # (predicted 256 MiB: one chunk of fp32 logits at 250,880 words + saved activations)
    assert abs(row["errors"]["step_peak"]) < 0.10, row
    assert row["measured"]["weights"] > 0


def test_cuda_case_list_covers_what_the_gpu_must_check():
    memory = _load_memory_bench()
    from vichat.train.loss import fused_backend

    cases = memory.cases(cuda=True)
    labels = [memory._label(c) for c in cases]
    assert len(labels) == len(set(labels))
    big = [c for c in cases if c["hidden"] == 4096]
    assert big and all(c["vocab"] == 250_880 and c["seq"] == 512 and 2 <= c["micro"] <= 4 for c in big)
    assert {c["autocast"] for c in big} == {True, False}
    losses = {"plain", "chunked"} | ({"fused"} if fused_backend() else set())
    at_vocab = [c for c in cases if c["vocab"] == 250_880 and c["seq"] == 512]
    assert {c["loss"] for c in at_vocab} == losses
    assert {c["checkpointing"] for c in at_vocab} == {True, False}
    assert {c["dtype"] for c in cases} == {"bf16", "fp16"}
    assert all(c["device"] == "cuda" for c in cases)
    # the CPU list: fp32 (and bf16 for one shape), no fused, one process per case; it includes a shape
    # where a layer's backward peaks in its MLP (heads x sequence / hidden < 1), as at the 7B models' width
    cpu = memory.cases(cuda=False)
    assert len(cpu) == 4 * len(memory.SHAPES) + 4 and {c["loss"] for c in cpu} == {"plain", "chunked"}
    assert any(c["heads"] * c["seq"] / c["hidden"] < 1 for c in cpu)


def test_checkpointing_auto_follows_the_plan(bench_path):
    import train
    import train_gpu

    from vichat.specs import Architecture, BaseModelSpec
    from vichat.train.config import resolve
    from vichat.train.validate import validate_config

    args = train.parse_args(["--gpu"])
    train._settle_defaults(args)
    assert (args.gpu_records, args.micro, args.total_batch) == (6144, 8, 16)
    arch = Architecture(family="bloom", n_layers=30, hidden_size=4096, n_heads=32, vocab_size=250_880)
    spec = BaseModelSpec(name="bench-bloom", description="test", hub_id="bench/bloom-random",
                         lora_targets=("query_key_value",), architecture=arch)
    cfg = train.bench_config(args, base_model=spec.name, data=str(Path("data")), output_dir="out", device="cuda",
                             load_in="none", compute_dtype="bf16", loss="chunked", gpu_mem_gb=139.8)
    assert validate_config(resolve(cfg, spec), spec, world=1) == []  # what TrainingRun checks on the GPU
    on, why = train_gpu.choose_checkpointing("auto", cfg, spec, 6144, 139.8)
    assert on is False and "off" in why  # ~43 GiB (vichat) / ~55 GiB (peer) of an H200's 139
    on, why = train_gpu.choose_checkpointing("auto", cfg, spec, 6144, 40.0)
    assert on is True
    assert train_gpu.choose_checkpointing("on", cfg, spec, 6144, 139.8)[0] is True
    assert train_gpu.choose_checkpointing("off", cfg, spec, 6144, 10.0)[0] is False


def test_throughput_leaves_out_the_first_step_and_flops_count_4n(bench_path):
    import train_gpu

    r = train_gpu.throughput([(5.0, 100), (1.0, 1000), (1.0, 1000)])
    assert r["tokens_per_second"] == 1000 and r["first_step_seconds"] == 5.0 and r["all_tokens"] == 2100
    assert train_gpu.throughput([(2.0, 100)])["tokens_per_second"] == 50  # a single step is all there is
    n_blocks = 30 * train_gpu.bloom_block_params(4096)
    n = 250_880 * 4096 + 2 * 4096 + n_blocks + 2 * 4096
    assert n == 7_069_016_064  # bloomz-7b1-mt, as vichat.train.shapes counts it
    no_ckpt = train_gpu.flops_per_token(n, n_blocks, False, [100, 300], 30, 4096)
    ckpt = train_gpu.flops_per_token(n, n_blocks, True, [100, 300], 30, 4096)
    assert no_ckpt["model"] == ckpt["model"] == 4 * n == no_ckpt["hardware"]
    assert ckpt["hardware"] == 4 * n + 2 * n_blocks
    assert no_ckpt["attention"] == 12 * 30 * 4096 * (100**2 + 300**2) / 400
    head = 250_880 * 4096
    part = train_gpu.flops_per_token(n, n_blocks, False, [100], 30, 4096, head_params=head, trained_fraction=0.5)
    assert part["head_on_trained"] == 4 * n - 2 * head  # the head skips the untrained half of the positions


def test_chunked_loss_takes_fp32_hidden_states_with_a_16bit_head():
    """On one GPU, Trainer's bf16 autocast wraps only the model's forward: BLOOM's final LayerNorm
    returns fp32 there, the tied 16-bit head stays bf16, and the loss runs outside autocast. The
    chunked loss (vichat's default without cut-cross-entropy, and the GPU benchmark's fallback) must
    compute in the head's dtype, as the model's own LM head does under autocast, not fail on the
    fp32 @ bf16 product; the gradient reaches the fp32 hidden states in fp32."""
    import torch
    import torch.nn.functional as F

    from vichat.train.loss import chunked_loss_sum

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 16, generator=g).requires_grad_()
    weight = (torch.randn(50, 16, generator=g) * 0.1).bfloat16()
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[:, :3] = -100
    loss = chunked_loss_sum(hidden, weight, None, labels)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(hidden.grad).all()
    assert hidden.grad[:, 2:8].abs().sum() > 0 and hidden.grad[:, :2].abs().sum() == 0  # prompt rows: no gradient
    ref_hidden = hidden.detach().clone().requires_grad_()
    logits = (ref_hidden.bfloat16() @ weight.t()).float()  # the plain path's head under autocast
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction="sum")
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-3)
    assert torch.allclose(hidden.grad, ref_hidden.grad, rtol=2e-2, atol=1e-3)


def test_fused_loss_check_compares_with_the_chunked_loss(bench_path, one_thread):
    """The check the GPU benchmark runs at the real head before its timed steps (there with the
    Triton kernel), here through cut-cross-entropy's CPU implementation on a small fp32 head."""
    pytest.importorskip("cut_cross_entropy")
    import torch
    import train_gpu

    weight = torch.randn(300, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    result = train_gpu.fused_vs_chunked(weight, "fp32", 20)
    assert result["ok"] and result["loss_rel_diff"] < 1e-5 and result["grad_rel_diff"] < 1e-4, result
    assert weight.grad is None  # the head stays frozen


def test_cuda_like_emulates_autocast_casts_and_boolean_dropout_masks():
    """bench/cuda_like.py: CUDA autocast's casts (LayerNorm up to fp32, matrix products down) and a
    1-byte dropout mask, with correct gradients, inside the block only."""
    import sys
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from cuda_like import cuda_like

    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(8, dtype=torch.bfloat16)
    with cuda_like(torch.bfloat16):
        assert F.layer_norm(x, (8,), w, w).dtype == torch.float32
        assert F.linear(x.float(), torch.randn(3, 8)).dtype == torch.bfloat16
        assert torch.softmax(x, -1).dtype == torch.float32
        assert F.softmax(x, dim=-1, dtype=torch.bfloat16).dtype == torch.bfloat16  # an explicit dtype wins
        y = F.dropout(x.float(), p=0.5, training=True)
    assert F.layer_norm(x, (8,), w, w).dtype == torch.bfloat16  # outside the block: untouched
    saved = [t for t in y.grad_fn.saved_tensors] if hasattr(y.grad_fn, "saved_tensors") else []
    assert any(t.dtype == torch.bool for t in saved)
    y.sum().backward()
    kept = (y != 0).to(torch.bfloat16)
    assert torch.equal(x.grad, kept * 2)  # scaled by 1 / (1 - p) where kept, 0 where dropped
