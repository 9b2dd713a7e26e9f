"""Benchmark: vichat's local engine vs vLLM (its CPU build) on the same tiny GPT-J with two LoRA adapters.

Both sides get the same requests through vichat's own backends (same template, same prompts,
greedy decoding, repetition penalty 1.0): ``LocalEngine`` in this process, and ``VllmBackend``,
which starts ``vllm serve`` with the command vichat builds (``--model-impl transformers``, the two
adapters as LoRA modules) and streams over HTTP. For 1 and 8 concurrent users (each in its own
thread, the two adapters alternating) it prints wall time, aggregate characters/s and time to first
text (medians over --repeat runs), the ratio of characters/s, and how many of vLLM's answers equal
the local engine's (greedy on the same weights: they differ only where float32 rounding flips a
pick, then the lengths differ a little too). It also prints how long
vLLM took to start answering.

The model: GPT-J with random weights, --layers x --hidden (head size 64, vLLM's CPU attention
needs one of its sizes), the vichat BPE tokenizer (vocabulary ~600), adapters r=8 on q_proj/v_proj.

vLLM lives in its own environment (docs/serving.md, "Checking with a real vLLM"); pass its program:
  OMP_NUM_THREADS=1 .venv/bin/python bench/vllm_cpu.py --vllm ~/vllm-venv/bin/vllm
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from serve import QUESTIONS  # noqa: E402 - the same prompts as bench/serve.py

CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def build(root: Path, layers: int, hidden: int, init: float) -> tuple[Path, dict[str, Path], int]:
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    from serve_helpers import random_adapters, tokenizer

    tok = tokenizer()
    config = GPTJConfig(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=hidden // 64, rotary_dim=32,
                        n_positions=1024, initializer_range=init, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = GPTJForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    base = root / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    adapters = random_adapters(base, root, ("a", "b"), ["q_proj", "v_proj"])
    return base, adapters, n_params


def visible(answers: list[str]) -> list[str]:
    """Answers without U+FFFD: vLLM streams one for bytes that never form a whole character, the
    local engine drops them."""
    return [a.replace("\ufffd", "") for a in answers]


def run(backend, users: int, decoding) -> tuple[float, list[float], list[str]]:
    """``users`` requests at once, each streamed in its own thread: wall s, TTFT s each, answers."""
    answers, ttft = [""] * users, [0.0] * users
    start = threading.Barrier(users + 1)

    def one(i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        parts = []
        for chunk in backend.stream(("a", "b")[i % 2], QUESTIONS[i % len(QUESTIONS)], decoding=decoding):
            if not parts:
                ttft[i] = time.perf_counter() - t0
            parts.append(chunk)
        answers[i] = "".join(parts)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, ttft, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm", required=True, help="the `vllm` program (shell words) of vLLM's environment")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--init", type=float, default=0.2,
                    help="initializer_range of the random weights (at 1.0 float32 rounding flips greedy picks)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--users", default="1,8")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch

    from vichat.plugins import get_registry
    from vichat.serve.config import LocalBackendConfig, ModelConfig, VllmBackendConfig
    from vichat.serve.engine import LocalEngine
    from vichat.serve.vllm import VllmBackend
    from vichat.specs import Decoding

    os.environ.update(CPU_ENV)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the vLLM server inherits it
    torch.set_num_threads(threads)
    reg = get_registry()
    greedy = Decoding(max_new_tokens=args.tokens, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    users = [int(u) for u in args.users.split(",")]
    with tempfile.TemporaryDirectory(prefix="vichat-bench-vllm-") as tmp:
        base, adapters, n_params = build(Path(tmp), args.layers, args.hidden, args.init)
        models = tuple(ModelConfig(name=n, adapter=str(p), template="chat") for n, p in adapters.items())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        local = LocalEngine(LocalBackendConfig(base="gptj-6b-vi", base_path=str(base), models=models, dtype="float32"),
                            registry=reg)
        vllm = VllmBackend(VllmBackendConfig(base="gptj-6b-vi", base_path=str(base), models=models, port=port,
                                             command=tuple(shlex.split(args.vllm)), dtype="float32", context=1024,
                                             startup_timeout=600), registry=reg)
        sides = {"vichat local engine": local, "vLLM (CPU build)": vllm}
        try:
            local.prepare()
            t0 = time.perf_counter()
            vllm.prepare()
            startup = time.perf_counter() - t0
            command = shlex.join(vllm.command)
            for backend in sides.values():  # warm-up: first-call costs are not throughput
                run(backend, 2, greedy)
            results: dict[tuple[str, int], list] = {}
            for _ in range(args.repeat):  # the sides alternate, so load spikes hit both alike
                for n in users:
                    for name, backend in sides.items():
                        results.setdefault((name, n), []).append(run(backend, n, greedy))
        finally:
            local.close()
            vllm.close()
    print(f"== GPT-J {args.layers} x {args.hidden} random weights (initializer_range {args.init}), {n_params / 1e6:.1f} M params, 2 LoRA adapters r=8, "
          f"float32, CPU, {threads} thread(s) each side ==")
    print(f"vLLM answered {startup:.1f} s after `{command}` started")
    print(f"{args.tokens} new tokens max per request, greedy, adapters alternating; median of {args.repeat} runs")
    print(f"{'users':>5} {'side':<22} {'wall s':>8} {'chars/s':>9} {'TTFT p50 ms':>12}  answers as the local engine's")
    for n in users:
        speed = {}
        for name in sides:
            runs = results[(name, n)]
            wall = statistics.median(r[0] for r in runs)
            chars = sum(len(a) for a in visible(runs[0][2]))
            ttft = statistics.median(t for r in runs for t in r[1]) * 1000
            speed[name] = chars / wall
            mine, theirs = visible(runs[-1][2]), visible(results[("vichat local engine", n)][-1][2])
            same = f"{sum(a == b for a, b in zip(mine, theirs))}/{n}"
            print(f"{n:>5} {name:<22} {wall:>8.2f} {chars / wall:>9.1f} {ttft:>12.0f}  {same:>5}")
        print(f"      chars/s vLLM / vichat = {speed['vLLM (CPU build)'] / speed['vichat local engine']:.2f}x")


if __name__ == "__main__":
    main()
