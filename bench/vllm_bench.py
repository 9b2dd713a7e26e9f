"""Benchmark: vichat's local engine vs vLLM on the same device and the same mixed-adapter load.

For a GPU deployment (vLLM's CUDA build installed in its own environment), and for vLLM's CPU build
with --device cpu. Two model shapes (--shapes), random weights, the project's default tokenizer
(its 4,000-token vocabulary, so both sides stream real text and vLLM's detokenizer is never handed
an id the tokenizer lacks), two random LoRA adapters (r=8) named ``chat`` and ``doctor``, and the
bare base as a third model:

  bloom   BLOOM, --layers x --hidden (default 24 x 1024, 16 heads: bloomz-560m's body; with the
          4,000-token vocabulary 307 M parameters instead of 559 M), adapters on query_key_value.
          vLLM serves no LoRA for BLOOM (docs/serving.md), so it runs what a practitioner must run:
          each adapter merged into the base (`vichat.train.export`), and three ``vllm serve``
          processes (merged chat, merged doctor, bare base), one ``type: vllm`` backend each; the
          local engine serves the three from one base in memory, batching them together.
  llama   a Llama of the same size (--layers x --hidden, MLP 8/3 x hidden, head size 64), adapters on
          q_proj/v_proj: vLLM's own Llama class serves both adapters as LoRA modules of ONE server
          (and the bare base by its served name), batching them together like the local engine.

Both sides get the same requests through vichat's own backends (``LocalEngine`` in this process,
``VllmBackend``, which starts ``vllm serve`` with the command vichat builds, over HTTP): for each
--users level, that many requests at once, each in its own thread, the three models in turn, the
same prompts, --tokens new tokens, greedy decoding, repetition penalty 1.0 (answers comparable). It
prints per side and level: wall time, generated tokens (the local engine's scheduler counter;
vLLM's ``vllm:generation_tokens_total`` from its /metrics, summed over its servers), tokens/s,
characters/s, time to first text and time between streamed deltas (p50/p95 over requests,
measured at the client as vichat's app sees them), how many answers equal the local engine's, and
the ratio vLLM / vichat of tokens/s. Medians over --repeat runs, sides alternating; every side
serves two requests once before timing (first-call costs, CUDA graphs and compilation are not
throughput). It also prints how long each server took to answer.

On a GPU (one command; vLLM's `vllm` program from its own environment):
  python bench/vllm_bench.py --device cuda --vllm ~/vllm-gpu/bin/vllm --json vllm-gpu.json
defaults there: bfloat16, 24 x 1024, --users 1,4,8,16, --tokens 64, --repeat 3, each BLOOM server
--gpu-memory-utilization 0.2 and the Llama server 0.6 (--gpu-memory-utilization is the total).
On a CPU with vLLM's CPU build (defaults float32, 4 x 512, --users 1,8; minutes: one server start
takes about a minute on two cores):
  OMP_NUM_THREADS=1 python bench/vllm_bench.py --device cpu --vllm ~/vllm-venv/bin/vllm --shapes llama
(bench/vllm_cpu.py is the earlier CPU-only comparison on GPT-J, kept as it was measured.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from serve_helpers import random_adapters  # noqa: E402 - the tests' random LoRA adapters
from serve import QUESTIONS, _finite  # noqa: E402 - the same prompts; strict JSON: NaN -> None

MODELS = (("chat", "chat"), ("doctor", "doctor"), ("bare", "chat"))  # (model name, template), in turn
# vLLM's CPU build: a small KV cache (GiB), no thread pinning on a shared machine, offline.
CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
COMMON_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
EXPORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- models


def build(root: Path, family: str, layers: int, hidden: int, init: float, dtype: str, device: str) -> dict:
    """A random ``family`` model in ``root/<family>/base`` (weights drawn on ``device``, saved in
    ``dtype``) and the ``chat`` and ``doctor`` adapters; for BLOOM also each adapter merged."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

    from vichat.data.tokenizers import default_tokenizer

    tok = default_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, initializer_range=init)
    heads = hidden // 64  # head size 64: what vLLM's CPU attention supports, and bloomz-560m's
    if family == "bloom":
        cls, config, targets = BloomForCausalLM, BloomConfig(hidden_size=hidden, n_layer=layers, n_head=heads, **ids), [
            "query_key_value"]
    else:
        cls, targets = LlamaForCausalLM, ["q_proj", "v_proj"]
        # MLP of 8/3 x hidden (Llama's proportion, rounded up to 256): three matrices with as many
        # parameters as BLOOM's two of 4 x hidden, so both shapes have about the same size.
        mlp = -(-8 * hidden // 3 // 256) * 256
        config = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048, **ids)
    out = root / family
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(getattr(torch, dtype)).save_pretrained(str(out / "base"))
    del model
    tok.save_pretrained(str(out / "base"))
    paths: dict[str, Any] = {"base": out / "base", "params": n_params}
    paths.update(random_adapters(out / "base", out, ("chat", "doctor"), targets))
    if family == "bloom":
        from vichat.plugins import get_registry
        from vichat.train.export import export

        for name in ("chat", "doctor"):
            paths[f"{name}-merged"] = export(paths[name], out / f"{name}-merged",
                                             base_models=get_registry().all("base_models"),
                                             base_path=str(paths["base"]), dtype=EXPORT_DTYPES[dtype])
    return paths


# --------------------------------------------------------------------------- sides


class LocalSide:
    """vichat's local engine: one base, both adapters and the bare base, continuous batching."""

    name = "vichat local engine"

    def __init__(self, paths: dict, args: argparse.Namespace) -> None:
        from vichat.plugins import get_registry
        from vichat.serve.config import LocalBackendConfig, ModelConfig
        from vichat.serve.engine import LocalEngine

        models = tuple(ModelConfig(name=n, adapter=str(paths[n]) if n != "bare" else None, template=t)
                       for n, t in MODELS)
        # base "tiny": a registered spec whose loader takes any local folder (the weights come from base_path).
        self.engine = LocalEngine(LocalBackendConfig(base="tiny", base_path=str(paths["base"]), models=models,
                                                     dtype=args.dtype, device=args.device, context=args.context,
                                                     max_batch_size=max(args.users), max_batch_tokens=1 << 20),
                                  registry=get_registry())

    def start(self) -> float:
        t0 = time.perf_counter()
        self.engine.prepare()
        return time.perf_counter() - t0

    def stream(self, model: str, question: str, decoding: Any) -> Iterator[str]:
        return self.engine.stream(model, question, decoding=decoding)

    def tokens(self) -> float | None:
        return float(self.engine.prepare().scheduler.tokens)

    def command(self) -> str:
        return "(in this process)"

    def close(self) -> None:
        self.engine.close()


class VllmSide:
    """vLLM through vichat's ``VllmBackend``: one server per backend, requests routed by model name."""

    def __init__(self, family: str, paths: dict, args: argparse.Namespace) -> None:
        from vichat.plugins import get_registry
        from vichat.serve.config import ModelConfig, VllmBackendConfig
        from vichat.serve.vllm import VllmBackend
        from vichat.specs import Architecture, BaseModelSpec

        command = tuple(shlex.split(args.vllm))
        common = dict(command=command, dtype=args.dtype, context=args.context, startup_timeout=args.startup_timeout)
        self.backends: dict[str, Any] = {}
        if family == "bloom":
            # No LoRA for BLOOM in vLLM: each model is its own server (merged weights, or the bare base).
            self.name = "vLLM (3 merged servers)"
            share = args.gpu_memory_utilization / 3
            sources = {"chat": paths["chat-merged"], "doctor": paths["doctor-merged"], "bare": paths["base"]}
            for model, template in MODELS:
                extra = ("--gpu-memory-utilization", f"{share:.2f}") if args.device != "cpu" else ()
                config = VllmBackendConfig(base="bloomz-560m", base_path=str(sources[model]), port=free_port(),
                                           models=(ModelConfig(name=model, template=template),), args=extra, **common)
                self.backends[model] = VllmBackend(config, registry=get_registry())
        else:
            self.name = "vLLM (1 server, LoRA)"
            spec = BaseModelSpec(name="random-llama", description="a random Llama", hub_id="none/random-llama",
                                 architecture=Architecture(family="llama", n_layers=args.layers, hidden_size=args.hidden,
                                                           n_heads=args.hidden // 64, vocab_size=4000),
                                 lora_targets=("q_proj", "v_proj"))
            extra = ("--gpu-memory-utilization", f"{args.gpu_memory_utilization:.2f}") if args.device != "cpu" else ()
            models = tuple(ModelConfig(name=n, adapter=str(paths[n]) if n != "bare" else None, template=t)
                           for n, t in MODELS)
            backend = VllmBackend(VllmBackendConfig(base="random-llama", base_path=str(paths["base"]), port=free_port(),
                                                    models=models, args=extra, **common), spec)
            self.backends = {n: backend for n, _ in MODELS}
        self.startups: list[float] = []

    def _distinct(self) -> list[Any]:
        return list({id(b): b for b in self.backends.values()}.values())

    def start(self) -> float:
        """Start the servers one after the other (concurrent starts on one GPU race in vLLM's
        memory profiling); the total seconds, each server's in ``startups``."""
        for b in self._distinct():
            t0 = time.perf_counter()
            b.prepare()
            self.startups.append(time.perf_counter() - t0)
        return sum(self.startups)

    def stream(self, model: str, question: str, decoding: Any) -> Iterator[str]:
        return self.backends[model].stream(model, question, decoding=decoding)

    def tokens(self) -> float | None:
        """``vllm:generation_tokens_total`` summed over the servers (None if one has no /metrics)."""
        total = 0.0
        for b in self._distinct():
            value = generation_tokens(b.config.url)
            if value is None:
                return None
            total += value
        return total

    def command(self) -> str:
        return " ; ".join(shlex.join(b.command) for b in self._distinct())

    def close(self) -> None:
        for b in self._distinct():
            b.close()


def generation_tokens(url: str) -> float | None:
    """The server's ``vllm:generation_tokens_total`` (all label sets summed), from ``<root>/metrics``."""
    root = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=10) as response:
            text = response.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("vllm:generation_tokens_total") and " " in line]
    return sum(values) if values else None


# --------------------------------------------------------------------------- measuring


def run(stream: Callable[[str, str, Any], Iterator[str]], users: int, decoding: Any) -> dict:
    """``users`` requests at once, each streamed in its own thread; per-request client-side times."""
    answers, first, last, deltas = [""] * users, [None] * users, [None] * users, [0] * users
    errors: list[str] = []
    start = threading.Barrier(users + 1)

    def one(i: int) -> None:
        model = MODELS[i % len(MODELS)][0]
        start.wait()
        try:
            parts = []
            for chunk in stream(model, QUESTIONS[i % len(QUESTIONS)], decoding):
                if not chunk:
                    continue  # a Queued place, not text
                now = time.perf_counter()
                first[i] = first[i] or now
                last[i] = now
                deltas[i] += 1
                parts.append(chunk)
            answers[i] = "".join(parts)
        except Exception as exc:  # noqa: BLE001 - reported below: a failed request must not pass for a fast one
            errors.append(f"request {i} ({model}): {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit("generation failed, no numbers measured:\n  " + "\n  ".join(errors))
    ttft = [f - t0 for f in first if f is not None]
    gaps = [(lt - f) / (n - 1) for f, lt, n in zip(first, last, deltas) if f is not None and n > 1]
    return {"wall": wall, "ttft": ttft, "gaps": gaps, "answers": answers}


def measured(side: Any, users: int, decoding: Any) -> dict:
    before = side.tokens()
    r = run(side.stream, users, decoding)
    after = side.tokens()
    r["tokens"] = None if before is None or after is None else after - before
    return r


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def visible(answers: list[str]) -> list[str]:
    """Answers without U+FFFD: vLLM streams one for bytes that never form a whole character, the
    local engine drops them."""
    return [a.replace("\ufffd", "") for a in answers]


def bench_shape(family: str, root: Path, args: argparse.Namespace) -> dict:
    from vichat.specs import Decoding

    t0 = time.perf_counter()
    paths = build(root, family, args.layers, args.hidden, args.init, args.dtype, args.device)
    print(f"\n== {family}: {args.layers} x {args.hidden} random weights (initializer_range {args.init}), "
          f"{paths['params'] / 1e6:.0f} M params + 2 LoRA adapters r=8, {args.dtype}, {args.device} "
          f"(models made in {time.perf_counter() - t0:.0f} s) ==", flush=True)
    greedy = Decoding(max_new_tokens=args.tokens, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    warm = Decoding(max_new_tokens=min(8, args.tokens), temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    sides = [LocalSide(paths, args), VllmSide(family, paths, args)]
    record: dict = {"family": family, "params_m": paths["params"] / 1e6, "rows": [], "ratios": {}}
    results: dict[tuple[str, int], list] = {}
    try:
        for side in sides:
            seconds = side.start()
            record[f"start_s:{side.name}"] = seconds
            print(f"{side.name}: ready in {seconds:.1f} s" + (f" (servers: {', '.join(f'{s:.1f}' for s in side.startups)} s)"
                                                             if getattr(side, "startups", None) else ""), flush=True)
        print(f"vLLM command(s): {sides[1].command()}", flush=True)
        record["vllm_command"] = sides[1].command()
        for side in sides:  # warm-up: first-call costs (CUDA graphs, compilation, kernels) are not throughput
            run(side.stream, 2, warm)
        for _ in range(args.repeat):  # the sides alternate, so load spikes hit both alike
            for n in args.users:
                for side in sides:
                    results.setdefault((side.name, n), []).append(measured(side, n, greedy))
    finally:
        for side in sides:
            side.close()
    local, remote = sides[0].name, sides[1].name
    print(f"{args.tokens} new tokens max per request, greedy, chat/doctor/bare in turn; median of {args.repeat} runs; "
          "times in ms; gap = time between streamed deltas")
    print(f"{'users':>5} {'side':<26}{'wall s':>8}{'tokens':>8}{'tok/s':>8}{'chars/s':>9}{'TTFT p50':>10}{'p95':>7}"
          f"{'gap p50':>9}{'p95':>7}  same answers")
    for n in args.users:
        speed = {}
        for side in (local, remote):
            runs = results[(side, n)]
            wall = statistics.median(r["wall"] for r in runs)
            toks = [r["tokens"] for r in runs if r["tokens"] is not None]
            tokens = statistics.median(toks) if len(toks) == len(runs) else None
            tps = statistics.median(r["tokens"] / r["wall"] for r in runs) if tokens is not None else None
            cps = statistics.median(sum(map(len, visible(r["answers"]))) / r["wall"] for r in runs)
            same = sum(a == b for a, b in zip(visible(runs[-1]["answers"]), visible(results[(local, n)][-1]["answers"])))
            row = {"users": n, "side": side, "wall_s": wall, "tokens": tokens, "tps": tps, "chars_per_s": cps,
                   "ttft_p50_ms": statistics.median(pct(r["ttft"], 0.5) for r in runs) * 1e3,
                   "ttft_p95_ms": statistics.median(pct(r["ttft"], 0.95) for r in runs) * 1e3,
                   "gap_p50_ms": statistics.median(pct(r["gaps"], 0.5) for r in runs) * 1e3,
                   "gap_p95_ms": statistics.median(pct(r["gaps"], 0.95) for r in runs) * 1e3,
                   "same_answers": same, "runs_wall_s": [r["wall"] for r in runs]}
            record["rows"].append(row)
            speed[side] = (tps, cps)
            shown = "-" if tps is None else f"{tps:.1f}"
            counted = "-" if tokens is None else f"{tokens:.0f}"
            print(f"{n:>5} {side:<26}{wall:>8.2f}{counted:>8}{shown:>8}{cps:>9.1f}"
                  f"{row['ttft_p50_ms']:>10.0f}{row['ttft_p95_ms']:>7.0f}{row['gap_p50_ms']:>9.1f}{row['gap_p95_ms']:>7.1f}"
                  f"  {same}/{n}")
        (lt, lc), (rt, rc) = speed[local], speed[remote]
        ratio = {"tokens_per_s": rt / lt if rt and lt else None, "chars_per_s": rc / lc if lc else None}
        record["ratios"][str(n)] = ratio
        print(f"{'':>5} vLLM / vichat: tokens/s {ratio['tokens_per_s'] or float('nan'):.2f}x, "
              f"chars/s {ratio['chars_per_s'] or float('nan'):.2f}x", flush=True)
    return record




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm", default=os.environ.get("VICHAT_VLLM_COMMAND"),
                    help="the `vllm` program (shell words) of vLLM's environment (default: $VICHAT_VLLM_COMMAND)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="where both sides run (default cuda)")
    ap.add_argument("--shapes", nargs="+", choices=("bloom", "llama"), default=["bloom", "llama"])
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                    help="default: bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--layers", type=int, default=None, help="default: 24 on a GPU, 4 on a CPU")
    ap.add_argument("--hidden", type=int, default=None, help="default: 1024 on a GPU, 512 on a CPU (head size 64)")
    ap.add_argument("--init", type=float, default=0.2,
                    help="initializer_range of the random weights (varied text, few float32 near-ties)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--users", default=None, help="concurrency levels (default: 1,4,8,16 on a GPU, 1,8 on a CPU)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--context", type=int, default=1024, help="--max-model-len (and the local engine's context)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6,
                    help="GPU memory share for vLLM, split over the servers of a shape (GPU only)")
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--json", type=Path, default=None, help="write every row and ratio here")
    args = ap.parse_args()
    if not args.vllm:
        raise SystemExit("--vllm: give the `vllm` program of vLLM's environment (or set VICHAT_VLLM_COMMAND)")
    gpu = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.layers = args.layers or (24 if gpu else 4)
    args.hidden = args.hidden or (1024 if gpu else 512)
    if args.hidden % 64:
        raise SystemExit(f"--hidden {args.hidden}: must be a multiple of 64 (head size 64)")
    args.users = [int(u) for u in (args.users or ("1,4,8,16" if gpu else "1,8")).split(",")]

    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update(COMMON_ENV)  # the vLLM servers inherit it
    if gpu:
        if not torch.cuda.is_available():
            raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA device here (use --device cpu "
                             "with vLLM's CPU build)")
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        os.environ.update(CPU_ENV)
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the vLLM servers inherit it
        torch.set_num_threads(threads)
        where = f"CPU, {threads} thread(s) each side"
    report: dict = {"environment": {"device": args.device, "where": where, "dtype": args.dtype, "torch": torch.__version__,
                                    "layers": args.layers, "hidden": args.hidden, "tokens": args.tokens,
                                    "users": args.users, "repeat": args.repeat, "command": " ".join(sys.argv)},
                    "shapes": {}}
    print(f"vichat local engine vs vLLM on {where}")
    with tempfile.TemporaryDirectory(prefix="vichat-bench-vllm-") as tmp:
        for family in args.shapes:
            report["shapes"][family] = bench_shape(family, Path(tmp), args)
            if args.json is not None:
                args.json.write_text(json.dumps(_finite(report), indent=1, allow_nan=False), encoding="utf-8")


if __name__ == "__main__":
    main()
