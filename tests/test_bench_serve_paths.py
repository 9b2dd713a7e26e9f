"""bench/serve.py's throughput part end to end, as a command, on a tiny BLOOM (small settings).

The GPU run of this benchmark gets a few minutes of a borrowed machine: these tests make sure the
command, its options and its JSON work before that time is spent (on the CPU, the same code path
but the device). Behaviour only, no speed: every side produced its tokens, the ratios and goals
are computed, every batched request streamed, and --budget-s stops the repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import tiny_bloom

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "serve.py"


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO, check=False)


def test_throughput_part_writes_every_side_ratio_and_goal_to_json(tmp_path):
    out = tmp_path / "serve.json"
    tokens, users = 6, [1, 2, 8]
    proc = run_bench("--device", "cpu", "--skip-memory", "--threads", "1", "--models", "tiny",
                     "--tiny", str(tiny_bloom().base), "--concurrency", *map(str, users), "--tokens", str(tokens),
                     "--repeat", "2", "--budget-s", "0.01", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    env = report["environment"]
    assert (env["device"], env["dtype"], env["tokens"], env["concurrency"]) == ("cpu", "float32", tokens, users)
    tiny = report["models"]["tiny"]
    # The budget (0.01 s) lets the first repeat run whole and stops the second.
    assert tiny["repeats"] == 1 and "1 of 2 repeats fit" in proc.stdout
    rows = {(r["users"], r["side"]): r for r in tiny["rows"]}
    assert set(rows) == {(u, s) for u in users for s in ("batched", "round-robin", "generate")}
    for (n, side), row in rows.items():
        # A random model may end a request early (EOS), never produce more than asked.
        assert 0 < row["tokens"] <= n * tokens, (n, side, row)
        assert row["tps"] > 0 and len(row["runs_tps"]) == 1
        assert row["ttft_p50_ms"] > 0 and row["ttft_p95_ms"] >= row["ttft_p50_ms"]
        if side == "generate":
            assert row["streamed"] is None  # one static batch: nothing streams
        else:
            assert row["streamed"] == n, (n, side, row)  # every request got its tokens over several moments
    for n in users:
        ratios = tiny["ratios"][str(n)]
        b = rows[(n, "batched")]["tps"]
        assert ratios["batched_vs_round_robin"] == pytest.approx(b / rows[(n, "round-robin")]["tps"])
        assert ratios["batched_vs_generate"] == pytest.approx(b / rows[(n, "generate")]["tps"])
    assert set(tiny["goals_at_8"]) == {"round_robin_4x", "generate_0_8x"}
    assert "goal at 8 users" in proc.stdout and "== tiny:" in proc.stdout


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the command would run the benchmark on it")
    proc = run_bench("--device", "cuda", "--models", "tiny", "--skip-memory", timeout=120)
    assert proc.returncode != 0
    assert "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serve_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_defaults_and_cuda_calls_without_a_gpu(monkeypatch, capsys):
    """The CUDA-only lines of the bench, run against torch.cuda stand-ins that validate their
    arguments as torch does (no GPU here): defaults on cuda, device checks, synchronisation."""
    import argparse

    import torch
    from torch.cuda._utils import _get_device_index

    bench = load_bench()
    current, synced = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # torch.cuda.set_device refuses a device without an index ("cuda"): the stand-in does the same.
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(_get_device_index(d)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Stand-in GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(torch.device(d)))

    def args(device, **kw):
        return argparse.Namespace(device=device, dtype=None, repeat=None, budget_s=None, skip_memory=False, **kw)

    gpu = args("cuda")
    bench.check_device(gpu)
    assert (gpu.dtype, gpu.repeat, gpu.budget_s, gpu.skip_memory) == ("bfloat16", 3, bench.GPU_BUDGET_S, True)
    assert current == [] and "memory part skipped" in capsys.readouterr().out
    second = args("cuda:1")
    bench.check_device(second)
    assert current == [1]
    cpu = args("cpu")
    bench.check_device(cpu)  # the CPU defaults are the bench's historical ones
    assert (cpu.dtype, cpu.repeat, cpu.budget_s, cpu.skip_memory) == ("float32", 3, 0, False)
    with pytest.raises(SystemExit, match="only 2 CUDA device"):
        bench.check_device(args("cuda:2"))
    with pytest.raises(SystemExit, match="only cpu and cuda"):
        bench.check_device(args("meta"))
    assert bench.describe_device("cuda:1", "bfloat16") == "cuda:1 (Stand-in GPU), bfloat16"
    bench.synchronize(torch.device("cuda:0"))
    bench.synchronize("cpu")
    assert synced == [torch.device("cuda:0")]


def test_kv_cache_bench_compares_the_caches_and_every_kind_draws_the_same_tokens(tmp_path):
    """bench/kv_cache.py, the GPU kit's `kvcache` step, on the CPU at the smallest settings."""
    out = tmp_path / "kv.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "kv_cache.py"), "--shapes", "tiny", "gptj-1024",
                           "--batch", "2", "--context", "8", "--steps", "2", "--repeat", "1", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["shape"]: r for r in json.loads(out.read_text(encoding="utf-8"))}
    assert set(rows) == {"tiny", "gptj-1024"}
    for row in rows.values():
        assert row["same_tokens"] is True and row["dynamic_over_vichat"] > 0
        assert {"dynamic", "vichat"} <= set(row["ms_per_step"])
    assert "static" in rows["gptj-1024"]["ms_per_step"]  # StaticCache runs GPT-J...
    assert "static" in rows["tiny"]["failed"]  # ...but not BLOOM, and the bench says so instead of stopping
