"""Benchmark: serving N LoRA adapters on one base against N separately loaded models; latency with users.

Two parts, measured in one run:

memory      a BLOOM-shaped model with random weights (default 12 layers x 1024 hidden, ~155 M params,
            float32) and N random LoRA adapters (r=8 on query_key_value). Each side runs in its own
            subprocess and reports its peak RSS above the RSS it had after importing torch:
              shared     vichat's LocalEngine: one base, N adapters in one PeftModel
              separate   N copies of base + adapter (what serving each model alone costs)
            Goal: shared <= separate / N + 10% of separate.

latency     the tiny model (a finished `vichat tiny build` if one is in the cache or given with --tiny,
            else random weights of the same shape) with two random adapters and the bare base,
            paper decoding (temperature 0.5, top-k 20, repetition penalty 1.2), --tokens new tokens,
            seed 0. Time to first token (first text delta) and tokens/s:
              1 user     the questions one at a time
              8 users    all at once, through the round-robin scheduler
              queued     the baseline a lock around generate would give 8 users: each waits for
                         the answers before it (computed from the 1-user runs)
              generate   transformers' own generate, one request at a time (tokens/s reference)

Not a timed test: run it by hand, e.g.
  .venv/bin/python bench/serve.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = [
    "Xin chào, bạn có khỏe không?", "Hãy kể về Hà Nội.", "Tôi bị đau đầu và sốt nhẹ, tôi nên làm gì?",
    "Viết một bài thơ ngắn về mùa thu.", "Làm sao để học tiếng Anh hiệu quả?", "Giải thích quang hợp là gì.",
    "Tôi bị ho khan ba ngày nay.", "Gợi ý ba món ăn sáng tốt cho sức khỏe.",
]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# --------------------------------------------------------------------------- model files


def make_models(root: Path, n_adapters: int, hidden: int, layers: int, heads: int, seed: int = 0) -> dict:
    """A random BLOOM plus ``n_adapters`` random LoRA adapters saved under ``root``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BloomConfig, BloomForCausalLM

    from vichat.data.tokenizers import default_tokenizer

    tok = default_tokenizer()
    config = BloomConfig(vocab_size=len(tok), hidden_size=hidden, n_layer=layers, n_head=heads,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = BloomForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    base = root / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    adapters = []
    for i in range(n_adapters):
        torch.manual_seed(seed + 1 + i)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query_key_value"],
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        path = root / f"adapter-{i}"
        peft.save_pretrained(str(path))
        model = peft.unload()  # back to the bare base for the next one
        adapters.append(str(path))
    return {"base": str(base), "adapters": adapters, "params": n_params}


# --------------------------------------------------------------------------- memory children


def child(mode: str, spec: dict, tokens: int) -> None:
    """Runs in a subprocess: load one way, generate a few tokens per model, print JSON."""
    import torch  # noqa: F401 - counted in the baseline
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from vichat.serve.config import LocalBackendConfig, ModelConfig
    from vichat.serve.engine import LocalEngine
    from vichat.specs import Decoding

    base_rss = rss_mb()
    dec = Decoding(max_new_tokens=tokens, temperature=0)
    engines = []
    t0 = time.perf_counter()
    if mode == "shared":
        models = tuple(ModelConfig(name=f"m{i}", adapter=a) for i, a in enumerate(spec["adapters"]))
        engines.append(LocalEngine(LocalBackendConfig(base="bloomz-560m", path=spec["base"], models=models)))
    else:
        for i, a in enumerate(spec["adapters"]):
            cfg = LocalBackendConfig(base="bloomz-560m", path=spec["base"], models=(ModelConfig(name=f"m{i}", adapter=a),))
            engines.append(LocalEngine(cfg))
    param_bytes = 0
    for e in engines:
        e.prepare()
        param_bytes += sum(p.numel() * p.element_size() for p in e.model.parameters())
    load_s = time.perf_counter() - t0
    for i in range(len(spec["adapters"])):
        e = engines[0] if mode == "shared" else engines[i]
        "".join(e.stream(f"m{i}", QUESTIONS[i % len(QUESTIONS)], decoding=dec))
    print(json.dumps({"mode": mode, "peak_mb": peak_mb() - base_rss, "param_mb": param_bytes / 2**20,
                      "load_s": load_s, "baseline_rss_mb": base_rss}))


def run_child(mode: str, spec_path: Path, tokens: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--spec", str(spec_path), "--tokens", str(tokens)],
                         capture_output=True, text=True, check=False, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(args: argparse.Namespace, root: Path) -> None:
    t = time.perf_counter()
    spec = make_models(root, args.adapters, args.hidden, args.layers, args.heads)
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print(f"memory: BLOOM {args.layers} x {args.hidden} ({args.heads} heads), {spec['params'] / 1e6:.0f} M params "
          f"float32, {args.adapters} random LoRA adapters r=8 (made in {time.perf_counter() - t:.0f} s)")
    shared = run_child("shared", spec_path, 8)
    separate = run_child("separate", spec_path, 8)
    n = args.adapters
    print(f"{'':34}{'peak RSS MB':>12}{'params MB':>11}{'load s':>8}")
    print(f"{'shared: 1 base + %d adapters' % n:34}{shared['peak_mb']:>12.0f}{shared['param_mb']:>11.0f}{shared['load_s']:>8.1f}")
    print(f"{'separate: %d x (base + adapter)' % n:34}{separate['peak_mb']:>12.0f}{separate['param_mb']:>11.0f}"
          f"{separate['load_s']:>8.1f}")
    ratio = shared["peak_mb"] / separate["peak_mb"]
    goal = 1 / n + 0.10
    print(f"peak RSS ratio shared/separate: {ratio:.3f}  (goal <= 1/{n} + 0.10 = {goal:.2f}: "
          f"{'met' if ratio <= goal else 'NOT met'}); parameter bytes ratio {shared['param_mb'] / separate['param_mb']:.3f}")


# --------------------------------------------------------------------------- latency


def tiny_engine(args: argparse.Namespace, root: Path):
    from peft import LoraConfig, get_peft_model
    import torch

    from vichat.serve.config import LocalBackendConfig, ModelConfig
    from vichat.serve.engine import LocalEngine

    base, what = args.tiny, "given with --tiny"
    if base is None:
        from vichat.tiny.build import list_builds

        done = [p for p in list_builds() if (p.base / "config.json").exists()]
        if done:
            base, what = str(done[0].base), "a finished `vichat tiny build`"
    if base is None:
        from transformers import BloomConfig, BloomForCausalLM

        from vichat.data.tokenizers import default_tokenizer
        from vichat.tiny.build import DEFAULT_CONFIG as C

        tok = default_tokenizer(vocab_size=C.vocab_size)
        torch.manual_seed(0)
        # initializer_range=1.0: BLOOM's 0.02 makes a random model repeat "\n", which shows no text at all.
        model = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=C.hidden_size, n_layer=C.n_layer,
                                             n_head=C.n_head, eos_token_id=tok.eos_token_id, initializer_range=1.0))
        base, what = str(root / "tiny-random"), "random weights of the tiny shape (no tiny build found)"
        model.save_pretrained(base)
        tok.save_pretrained(base)
    from transformers import AutoModelForCausalLM

    adapters = []
    for i in range(2):
        torch.manual_seed(10 + i)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=8, target_modules=["query_key_value"], init_lora_weights=False, task_type="CAUSAL_LM"))
        path = root / f"tiny-adapter-{i}"
        m.save_pretrained(str(path))
        adapters.append(str(path))
    models = (ModelConfig(name="chat", adapter=adapters[0], template="chat"),
              ModelConfig(name="doctor", adapter=adapters[1], template="doctor"),
              ModelConfig(name="bare", template="chat"))
    engine = LocalEngine(LocalBackendConfig(base="tiny", path=base, models=models, seed=0))
    engine.prepare()
    n = sum(p.numel() for p in engine.model.parameters())
    print(f"latency: tiny model from {what}: {base} ({n / 1e6:.1f} M params with adapters), "
          f"{os.cpu_count()} CPU threads")
    return engine


def one(engine, name: str, question: str, dec, results: list, t_submit: float | None = None) -> None:
    t0 = time.perf_counter() if t_submit is None else t_submit
    first = None
    for _delta in engine.stream(name, question, decoding=dec):
        if first is None:
            first = time.perf_counter() - t0
    results.append({"ttft": first if first is not None else float("nan"), "total": time.perf_counter() - t0})


def hf_generate(engine, jobs: list, dec) -> tuple[int, float]:
    """The same requests through transformers' ``generate`` (non-streaming), one at a time."""
    import torch

    from vichat.data.tokenize import encode_text, resolve_template
    from vichat.serve.history import fold_history

    loaded = engine.prepare()
    runner, tok = loaded.scheduler.runner, loaded.tokenizer.tokenizer
    tokens, t0 = 0, time.perf_counter()
    for name, q in jobs:
        ids = encode_text(tok, fold_history(resolve_template(engine._models[name].template), q))
        with runner.lock, torch.inference_mode():
            runner.activate(loaded.keys[name])
            out = engine.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=dec.max_new_tokens, do_sample=True, temperature=dec.temperature,
                                        top_k=dec.top_k, repetition_penalty=dec.repetition_penalty)
        tokens += out.shape[1] - len(ids)
    return tokens, time.perf_counter() - t0


def bench_latency(args: argparse.Namespace, root: Path) -> None:
    from vichat.specs import Decoding

    engine = tiny_engine(args, root)
    scheduler = engine.prepare().scheduler
    dec = Decoding(max_new_tokens=args.tokens)  # the paper's sampling settings
    names = ["chat", "doctor", "bare"]
    jobs = [(names[i % 3], QUESTIONS[i % len(QUESTIONS)]) for i in range(args.users)]
    one(engine, "chat", "khởi động", dec, [])  # warm-up: first-call costs are not latency

    runs: dict[str, list] = {"solo": [], "many": [], "queued": [], "hf": []}
    for _ in range(args.repeat):  # phases alternate, so a noisy neighbour hits all of them alike
        solo: list[dict] = []
        steps0, t0 = scheduler.steps, time.perf_counter()
        for name, q in jobs:
            one(engine, name, q, dec, solo)
        solo_time, solo_tokens = time.perf_counter() - t0, scheduler.steps - steps0
        runs["solo"].append(([r["ttft"] for r in solo], solo_tokens / solo_time))

        many: list[dict] = []
        steps0, t0 = scheduler.steps, time.perf_counter()
        threads = [threading.Thread(target=one, args=(engine, n, q, dec, many, t0)) for n, q in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs["many"].append(([r["ttft"] for r in many], (scheduler.steps - steps0) / (time.perf_counter() - t0)))

        # The baseline: the same requests behind one lock, in arrival order: each waits for those before it.
        queued, waited = [], 0.0
        for r in solo:
            queued.append(waited + r["ttft"])
            waited += r["total"]
        runs["queued"].append((queued, solo_tokens / solo_time))
        hf_tokens, hf_time = hf_generate(engine, jobs, dec)
        runs["hf"].append(([hf_time / len(jobs)], hf_tokens / hf_time))

    def med(key: str, f) -> float:
        return statistics.median(f(r) for r in runs[key])

    def row(label: str, key: str, users: int) -> None:
        print(f"{label:40}{med(key, lambda r: statistics.mean(r[0])) * 1000:>9.0f}"
              f"{med(key, lambda r: max(r[0])) * 1000:>9.0f}{med(key, lambda r: r[1]):>11.1f}"
              f"{med(key, lambda r: r[1]) / users:>11.1f}")

    print(f"{args.users} requests (3 models: 2 adapters + bare base) x up to {args.tokens} new tokens; paper "
          f"sampling, seed 0; median of {args.repeat} repeats")
    print(f"{'':40}{'TTFT ms':>9}{'max ms':>9}{'tok/s all':>11}{'tok/s each':>11}")
    row("1 user at a time (vichat stream)", "solo", 1)
    row(f"{args.users} users at once (vichat round-robin)", "many", args.users)
    row(f"{args.users} users behind a lock (baseline)", "queued", args.users)
    row("1 user at a time (transformers generate)", "hf", 1)
    ttft_ratio = med("queued", lambda r: statistics.mean(r[0])) / med("many", lambda r: statistics.mean(r[0]))
    print(f"mean TTFT with {args.users} users: lock / round-robin = {ttft_ratio:.1f}x lower with round-robin; "
          f"aggregate tok/s round-robin / one at a time = {med('many', lambda r: r[1]) / med('solo', lambda r: r[1]):.2f}x; "
          f"vichat stream / transformers generate (1 user) = {med('solo', lambda r: r[1]) / med('hf', lambda r: r[1]):.2f}x")
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=4, help="N adapters for the memory part")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per request in the latency part")
    ap.add_argument("--repeat", type=int, default=3, help="latency repeats (the median is printed)")
    ap.add_argument("--tiny", default=None, help="tiny base model folder (default: a cached build, else random)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--child", choices=("shared", "separate"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, json.loads(args.spec.read_text()), args.tokens)
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="vichat-bench-serve-") as tmp:
        if not args.skip_memory:
            bench_memory(args, Path(tmp))
            print()
        if not args.skip_latency:
            bench_latency(args, Path(tmp))


if __name__ == "__main__":
    main()
