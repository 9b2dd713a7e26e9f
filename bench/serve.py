"""Benchmark: N LoRA adapters on one base vs N loaded models; continuous batching vs its peers.

Two parts, measured in one run:

memory      a BLOOM-shaped model with random weights (default 12 layers x 1024 hidden, ~155 M params,
            float32) and N random LoRA adapters (r=8 on query_key_value). Each side runs in its own
            subprocess and reports its peak RSS above the RSS it had after importing torch:
              shared     vichat's LocalEngine: one base, N adapters in one PeftModel
              separate   N copies of base + adapter (what serving each model alone costs)
            Goal: shared <= separate / N + 10% of separate.

throughput  for 1, 4, 8 and 16 concurrent requests (--concurrency), each streaming in its own
            thread, on two random LoRA adapters and the bare base mixed, paper sampling
            (temperature 0.5, top-k 20, repetition penalty 1.2), --tokens new tokens, seed 0:
              batched      vichat's engine: continuous batching, one forward pass per step over
                           every request whatever its adapter
              round-robin  the former scheduler (bench/roundrobin.py): one request per forward
                           pass, adapters switched between them
              generate     transformers' `generate` on one static left-padded batch of the same
                           prompts with one adapter (not streaming: TTFT = the whole batch)
            Aggregate tokens/s, time to first token and time per output token (p50/p95, from the
            time each token reaches its request's text stream), and how many requests streamed.
            Models (--models): the tiny model (a finished `vichat tiny build`, --tiny, else random
            weights of its shape) and a bloomz-560m-shaped random BLOOM (24 x 1024, vocab 250880).
            Goals at 8 users: batched >= 4x round-robin and >= 0.8x static generate.

Device (--device cpu|cuda, default cpu; --dtype, default float32 on a CPU, bfloat16 on a GPU): the
engine, the round-robin scheduler and `generate` all run the same model on that device. Before any
timing each side serves two mixed-adapter requests once on it (CUDA context, cuBLAS handles,
peft's first mixed call, first-call costs in general), so the first measured repeat is not paying
for them. Times are wall-clock times at which each token reaches its request's text stream; the
token id has been copied to the CPU by then, so the GPU work for it is done. `generate`'s wall
time ends after a device synchronisation.

The repeats go round all concurrency levels and sides (repeat-major, the sides alternating), so
whatever the noise, each repeat is a complete set. --budget-s bounds the throughput part: the
first repeat of every model always runs, a further one only if the previous repeat's duration
still fits in the model's share of the budget (of what is left of it, 1/3 for the tiny model and
2/3 for the 560m shape when both run); the number of repeats each median is over is printed and
written to --json.
--json PATH writes every row (medians and each run's tokens/s), the ratios and the goals' verdicts;
it is rewritten after each model, so a run cut short keeps the models it finished.

Not a timed test: run it by hand with fixed threads, e.g.
  OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py --threads 1 --skip-memory

On a GPU (the memory part measures CPU RSS and is skipped there; defaults on cuda: --dtype
bfloat16, --tokens 64, --repeat 3, --budget-s 100):
  python bench/serve.py --device cuda --json serve-gpu.json
which runs the tiny model then the bloomz-560m shape, 1/4/8/16 users, the three sides, in about
2 minutes on one GPU (docs/serving.md, "Measuring it", says how the time splits).
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
    from vichat.plugins import get_registry
    from vichat.serve.engine import LocalEngine
    from vichat.specs import Decoding

    base_rss = rss_mb()
    dec = Decoding(max_new_tokens=tokens, temperature=0)
    engines = []
    t0 = time.perf_counter()
    if mode == "shared":
        models = tuple(ModelConfig(name=f"m{i}", adapter=a) for i, a in enumerate(spec["adapters"]))
        engines.append(LocalEngine(LocalBackendConfig(base="bloomz-560m", base_path=spec["base"], models=models), registry=get_registry()))
    else:
        for i, a in enumerate(spec["adapters"]):
            cfg = LocalBackendConfig(base="bloomz-560m", base_path=spec["base"], models=(ModelConfig(name=f"m{i}", adapter=a),))
            engines.append(LocalEngine(cfg, registry=get_registry()))
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


# --------------------------------------------------------------------------- throughput


MODELS = ("chat", "doctor", "bare")  # two adapters and the bare base, mixed in every run


def tiny_files(args: argparse.Namespace, root: Path) -> tuple[str, str]:
    """The tiny base: --tiny, else a finished `vichat tiny build`, else random weights of its shape."""
    if args.tiny is not None:
        return args.tiny, "given with --tiny"
    from vichat.tiny.build import list_builds

    done = [p for p in list_builds() if (p.base / "config.json").exists()]
    if done:
        return str(done[0].base), "a finished `vichat tiny build`"
    from vichat.tiny.build import DEFAULT_CONFIG as C

    path = random_bloom(root / "tiny-random", C.hidden_size, C.n_layer, C.n_head, None, init=1.0, dtype=args.dtype,
                        device=args.device)
    return path, "random weights of the tiny shape (no tiny build found)"


def random_bloom(path: Path, hidden: int, layers: int, heads: int, vocab: int | None, init: float = 0.02,
                 dtype: str = "float32", device: str = "cpu") -> str:
    """A BLOOM with random weights saved in ``dtype`` (the dtype it will be served in: half the bytes
    to write and read back for bfloat16) under ``path``, with the project's default tokenizer.
    The weights are drawn on ``device``: on a GPU in a moment, where two CPU cores take about 25 s
    (with the saving) for the bloomz-560m shape."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from vichat.data.tokenizers import default_tokenizer

    tok = default_tokenizer()
    torch.manual_seed(0)
    # init 1.0 on the tiny shape: BLOOM's 0.02 makes a small random model repeat "\n" (no text to stream).
    config = BloomConfig(vocab_size=vocab or len(tok), hidden_size=hidden, n_layer=layers, n_head=heads,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         initializer_range=init)
    with torch.device(device):
        model = BloomForCausalLM(config)
    model.to(getattr(torch, dtype)).save_pretrained(str(path))
    del model
    tok.save_pretrained(str(path))
    return str(path)


def throughput_engine(base: str, root: Path, tag: str, prefill_chunk: int | None = None, device: str = "cpu",
                      dtype: str = "float32"):
    """A LocalEngine over ``base`` on ``device`` in ``dtype``, with two random LoRA adapters (r=8 on
    query_key_value) and the bare base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from vichat.serve.config import LocalBackendConfig, ModelConfig
    from vichat.plugins import get_registry
    from vichat.serve.engine import LocalEngine

    adapters = []
    model = AutoModelForCausalLM.from_pretrained(base)
    for i in range(2):
        torch.manual_seed(10 + i)
        peft = get_peft_model(model, LoraConfig(r=8, target_modules=["query_key_value"], init_lora_weights=False,
                                                task_type="CAUSAL_LM"))
        path = root / f"{tag}-adapter-{i}"
        peft.save_pretrained(str(path))
        model = peft.unload()
        adapters.append(str(path))
    del model
    models = (ModelConfig(name="chat", adapter=adapters[0], template="chat"),
              ModelConfig(name="doctor", adapter=adapters[1], template="doctor"),
              ModelConfig(name="bare", template="chat"))
    engine = LocalEngine(LocalBackendConfig(base="tiny", base_path=base, models=models, seed=0, max_batch_size=16,
                                            max_batch_tokens=1 << 20, dtype=dtype, device=device,
                                            prefill_chunk=prefill_chunk), registry=get_registry())
    got, want = torch.device(engine.prepare().scheduler.runner.device), torch.device(device)
    if got.type != want.type or (want.index is not None and got.index != want.index):  # every side runs on it
        raise SystemExit(f"the engine's model is on {got}, not on {want}")
    return engine


def synchronize(device: str) -> None:
    """Wait for the work queued on ``device`` (a CUDA device runs asynchronously; a CPU needs nothing)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TokenClock:
    """Records when each text stream receives a token (both schedulers push every token to one)."""

    def __init__(self) -> None:
        from vichat.serve.text import TokenTextStream

        self.times: dict[int, list[float]] = {}
        clock, init, push = self, TokenTextStream.__init__, TokenTextStream.push

        def counted_init(stream, *a, **kw):  # noqa: ANN001
            init(stream, *a, **kw)
            stream.bench_n = len(clock.times)
            clock.times[stream.bench_n] = []

        def timed_push(stream, token_id):  # noqa: ANN001
            clock.times[stream.bench_n].append(time.perf_counter())
            return push(stream, token_id)

        TokenTextStream.__init__, TokenTextStream.push = counted_init, timed_push

    def take(self) -> list[list[float]]:
        out, self.times = list(self.times.values()), {}
        return out


def legacy_stream(engine, scheduler, name: str, question: str, dec):  # noqa: ANN001
    """One request through the round-robin scheduler, prompt and sampling built as the engine does."""
    from roundrobin import Request, consume

    from vichat.data.tokenize import resolve_template
    from vichat.serve.history import fold_history, stop_markers
    from vichat.serve.sampling import Sampler, request_seed
    from vichat.serve.text import TokenTextStream

    loaded = engine.prepare()
    tpl = resolve_template(engine._models[name].template)
    text = fold_history(tpl, question)
    req = Request(adapter=loaded.keys[name], prompt_ids=loaded.prefix + loaded.tokenizer.encode(text),
                  sampler=Sampler(dec, request_seed(0, name, text)), text=TokenTextStream(loaded.tokenizer, stop_markers(tpl)),
                  max_new_tokens=dec.max_new_tokens, eos_ids=loaded.eos_ids)
    scheduler.submit(req)
    return consume(req)


def concurrent(start, jobs: list, clock: TokenClock) -> dict:  # noqa: ANN001
    """Run every job at once (a thread each, streaming); per-request token times -> metrics."""
    deltas = [0] * len(jobs)
    errors: list[str] = []

    def drain(i: int, name: str, q: str) -> None:
        try:
            for d in start(name, q):
                deltas[i] += bool(d)
        except Exception as exc:  # noqa: BLE001 - reported below: a failed request must not pass for a fast one
            errors.append(f"request {i} ({name}): {type(exc).__name__}: {exc}")

    clock.take()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=drain, args=(i, n, q)) for i, (n, q) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit("generation failed, no numbers measured:\n  " + "\n  ".join(errors))
    times = [t for t in clock.take() if t]
    ttft = [t[0] - t0 for t in times]
    tpot = [(t[-1] - t[0]) / (len(t) - 1) for t in times if len(t) > 1]
    tokens = sum(len(t) for t in times)
    # Streaming: every request got its tokens over several moments, not all at the end.
    streamed = sum(len(set(t)) > 1 and t[0] < t0 + 0.9 * wall for t in times)
    return {"tps": tokens / wall, "ttft": ttft, "tpot": tpot, "streamed": streamed, "n": len(jobs), "tokens": tokens}


def static_generate(engine, jobs: list, dec) -> dict:  # noqa: ANN001
    """transformers' ``generate`` on one left-padded batch of the same prompts, all on the first adapter."""
    import torch

    from vichat.data.tokenize import resolve_template
    from vichat.serve.history import fold_history

    loaded = engine.prepare()
    tok, model, device = loaded.tokenizer, engine.model, loaded.scheduler.runner.device
    prompts = [loaded.prefix + tok.encode(fold_history(resolve_template(engine._models[n].template), q)) for n, q in jobs]
    width = max(map(len, prompts))
    pad = tok.tokenizer.pad_token_id
    # On the model's device, as a practitioner passes them (generate does not move its inputs).
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    eos = next(iter(loaded.eos_ids))
    with loaded.scheduler.runner.lock, torch.inference_mode():
        model.set_adapter(loaded.keys["chat"])  # what a practitioner does for one adapter
        torch.manual_seed(0)
        synchronize(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, eos_token_id=eos,
                             **dec.as_generate_kwargs())
        synchronize(device)  # the last step's kernels may still be running when generate returns
        wall = time.perf_counter() - t0
        loaded.scheduler.runner.reset()  # the engine's runner tracks which adapter is active
    new = out[:, width:].tolist()
    tokens = sum(row.index(eos) if eos in row else len(row) for row in new)
    return {"tps": tokens / wall, "ttft": [wall] * len(jobs), "tpot": [wall / max(1, len(new[0]))] * len(jobs),
            "streamed": 0, "n": len(jobs), "tokens": tokens}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


SIDES = ("batched", "round-robin", "generate")


def describe_device(device: str, dtype: str) -> str:
    """``"CPU, float32, torch threads 1"`` or ``"cuda:0 (NVIDIA H200), bfloat16"``: the header's words."""
    import torch

    d = torch.device(device)
    if d.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(d)}), {dtype}"
    return f"CPU, {dtype}, torch threads {torch.get_num_threads()}"


def bench_throughput(args: argparse.Namespace, root: Path, which: str, deadline: float | None = None) -> dict:
    """Throughput of the three sides on one model; returns its JSON record (rows, ratios, goals).

    ``deadline`` (a ``time.perf_counter()`` value): repeats after the first run only while the
    previous repeat's duration still fits before it."""
    from roundrobin import AdapterRunner, Scheduler as RoundRobin
    from vichat.specs import Decoding

    t_setup = time.perf_counter()
    if which == "tiny":
        base, what = tiny_files(args, root)
    else:
        base = random_bloom(root / "bloomz-560m-shape", 1024, 24, 16, 250880, dtype=args.dtype, device=args.device)
        what = "random weights, bloomz-560m shape"
    engine = throughput_engine(base, root, which, args.prefill_chunk, args.device, args.dtype)
    model = engine.model
    n_params = sum(p.numel() for p in model.parameters())
    chunk = engine.prepare().scheduler.prefill_chunk
    print(f"\n== {which}: {what} ({n_params / 1e6:.0f} M params with 2 adapters, "
          f"{describe_device(args.device, args.dtype)}, prefill_chunk {chunk}) ==", flush=True)
    rr = RoundRobin(AdapterRunner(model), name="vichat-roundrobin")
    clock = TokenClock()
    dec = Decoding(max_new_tokens=args.tokens)  # the paper's sampling: temperature 0.5, top-k 20, penalty 1.2
    batched = lambda n, q: engine.stream(n, q, decoding=dec)  # noqa: E731
    legacy = lambda n, q: legacy_stream(engine, rr, n, q, dec)  # noqa: E731
    # Warm-up, untimed: first-call costs are not throughput (on a GPU: the CUDA context, cuBLAS
    # handles, kernels loaded at their first launch). Every side serves two requests on two
    # adapters once, so the mixed-adapter path, the single-adapter path and generate all ran.
    warm, warm_jobs = Decoding(max_new_tokens=min(8, args.tokens)), [("chat", "khởi động"), ("doctor", "khởi động")]
    concurrent(batched, [("chat", "khởi động")], clock)
    concurrent(lambda n, q: engine.stream(n, q, decoding=warm), warm_jobs, clock)
    if args.rr_max >= 1:
        concurrent(lambda n, q: legacy_stream(engine, rr, n, q, warm), warm_jobs, clock)
        engine.prepare().scheduler.runner.reset()
    static_generate(engine, warm_jobs, warm)
    setup_s = time.perf_counter() - t_setup
    runs: dict = {}
    done = 0
    last = 0.0
    for rep in range(args.repeat):  # each repeat: every level, the sides alternating, so noise hits all alike
        if rep and deadline is not None and time.perf_counter() + last > deadline:
            print(f"(budget: {rep} of {args.repeat} repeats fit; the medians are over {rep})", flush=True)
            break
        t_rep = time.perf_counter()
        for users in args.concurrency:
            jobs = [(MODELS[i % 3], QUESTIONS[i % len(QUESTIONS)]) for i in range(users)]
            runs.setdefault(("batched", users), []).append(concurrent(batched, jobs, clock))
            if users <= args.rr_max:
                runs.setdefault(("round-robin", users), []).append(concurrent(legacy, jobs, clock))
                engine.prepare().scheduler.runner.reset()  # the round-robin runner switched adapters
            runs.setdefault(("generate", users), []).append(static_generate(engine, jobs, dec))
        last = time.perf_counter() - t_rep
        done = rep + 1
        print(f"(repeat {done}: {last:.1f} s)", flush=True)
    rr.close()
    engine.close()

    def med(key, f) -> float:  # noqa: ANN001
        return statistics.median(f(r) for r in runs[key])

    print(f"{args.tokens} new tokens max per request, models mixed (chat, doctor adapters + bare base; generate: "
          f"one adapter); median of {done} runs; TTFT/TPOT in ms")
    print(f"{'users':>5} {'scheduler':<12}{'tok/s':>8}{'TTFT p50':>10}{'p95':>8}{'TPOT p50':>10}{'p95':>8}  streamed")
    record: dict = {"model": which, "what": what, "params_m": n_params / 1e6, "prefill_chunk": chunk,
                    "repeats": done, "setup_s": setup_s, "rows": [], "ratios": {}}
    for users in args.concurrency:
        for side in SIDES:
            key = (side, users)
            if key not in runs:
                continue
            row = {"users": users, "side": side, "tps": med(key, lambda r: r["tps"]),
                   "ttft_p50_ms": med(key, lambda r: pct(r["ttft"], 0.5)) * 1e3,
                   "ttft_p95_ms": med(key, lambda r: pct(r["ttft"], 0.95)) * 1e3,
                   "tpot_p50_ms": med(key, lambda r: pct(r["tpot"], 0.5)) * 1e3,
                   "tpot_p95_ms": med(key, lambda r: pct(r["tpot"], 0.95)) * 1e3,
                   "tokens": med(key, lambda r: r["tokens"]),
                   "streamed": None if side == "generate" else min(r["streamed"] for r in runs[key]),
                   "runs_tps": [r["tps"] for r in runs[key]]}
            record["rows"].append(row)
            stream = "-" if row["streamed"] is None else f"{row['streamed']}/{users}"
            print(f"{users:>5} {side:<12}{row['tps']:>8.1f}{row['ttft_p50_ms']:>10.0f}{row['ttft_p95_ms']:>8.0f}"
                  f"{row['tpot_p50_ms']:>10.1f}{row['tpot_p95_ms']:>8.1f}  {stream}")
        b = med(("batched", users), lambda r: r["tps"])
        vs_rr = b / med(("round-robin", users), lambda r: r["tps"]) if ("round-robin", users) in runs else float("nan")
        vs_gen = b / med(("generate", users), lambda r: r["tps"])
        record["ratios"][str(users)] = {"batched_vs_round_robin": None if vs_rr != vs_rr else vs_rr,
                                        "batched_vs_generate": vs_gen}
        print(f"{'':>5} ratios: batched / round-robin = {vs_rr:.2f}x, batched / static generate = {vs_gen:.2f}x")
    if "8" in record["ratios"]:
        vs_rr, vs_gen = (record["ratios"]["8"][k] for k in ("batched_vs_round_robin", "batched_vs_generate"))
        record["goals_at_8"] = {"round_robin_4x": None if vs_rr is None else vs_rr >= 4, "generate_0_8x": vs_gen >= 0.8}
        print(f"goal at 8 users: >= 4x round-robin ({(vs_rr or float('nan')):.2f}x: "
              f"{'met' if vs_rr is not None and vs_rr >= 4 else 'NOT met'}), "
              f">= 0.8x static generate ({vs_gen:.2f}x: {'met' if vs_gen >= 0.8 else 'NOT met'})")
    return record


def environment(args: argparse.Namespace) -> dict:
    """What the numbers were measured on (written to --json)."""
    import platform

    import torch

    d = torch.device(args.device)
    return {"device": args.device, "dtype": args.dtype, "gpu": torch.cuda.get_device_name(d) if d.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "tokens": args.tokens, "repeat": args.repeat, "concurrency": args.concurrency, "rr_max": args.rr_max,
            "budget_s": args.budget_s, "command": " ".join(sys.argv)}


def _finite(value):  # noqa: ANN001, ANN202
    """``value`` with every NaN replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` to ``path`` (nothing without one), replacing any earlier file at once."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False), encoding="utf-8")
        tmp.replace(path)  # whole or absent, even if the run is killed while writing


def check_device(args: argparse.Namespace) -> None:
    """Fill device-dependent defaults; a device that is not there is a clear error, not a traceback later."""
    import torch

    try:
        d = torch.device(args.device)
    except RuntimeError as exc:
        raise SystemExit(f"--device {args.device}: {exc} (use cpu, cuda or cuda:N)") from None
    if d.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {args.device}: only cpu and cuda are supported")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here "
                         "(run with --device cpu, or on a machine with a GPU and a CUDA build of torch)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    gpu = d.type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.repeat = args.repeat if args.repeat is not None else 3
    if args.budget_s is None:
        args.budget_s = GPU_BUDGET_S if gpu else 0
    if gpu and not args.skip_memory:
        print("memory part skipped on a GPU: it measures the process's CPU RSS (run it with --device cpu)")
        args.skip_memory = True
    if gpu and d.index is not None:
        # "cuda:N": N becomes this thread's current device (set_device refuses a device without an index).
        torch.cuda.set_device(d)


#: Default --budget-s on a GPU: the throughput part's share of a time-boxed GPU session.
GPU_BUDGET_S = 100.0
#: How --budget-s is shared: the 560m shape's repeat costs more than the tiny model's (24 layers
#: against 4, where a GPU pass costs per kernel launched) and is the one whose numbers matter most.
BUDGET_WEIGHT = {"tiny": 1, "560m": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=4, help="N adapters for the memory part")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the throughput part runs")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                    help="the served models' dtype (default: float32 on a CPU, bfloat16 on a GPU)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent requests")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per request in the throughput part")
    ap.add_argument("--repeat", type=int, default=None, help="throughput repeats (the median is printed; default 3)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds for the throughput part: repeats after the first stop when the next would not fit "
                         f"(default: none on a CPU, {GPU_BUDGET_S:.0f} on a GPU; 0: no limit)")
    ap.add_argument("--json", type=Path, default=None, help="write every row, the ratios and the goals here")
    ap.add_argument("--prefill-chunk", type=int, default=None, help="the engine's prefill_chunk (default: its own)")
    ap.add_argument("--rr-max", type=int, default=16, help="run the round-robin baseline up to this many users")
    ap.add_argument("--models", nargs="+", choices=("tiny", "560m"), default=["tiny", "560m"],
                    help="throughput on the tiny model and/or a bloomz-560m-shaped random model")
    ap.add_argument("--tiny", default=None, help="tiny base model folder (default: a cached build, else random)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    check_device(args)
    report: dict = {"environment": environment(args), "models": {}}
    with tempfile.TemporaryDirectory(prefix="vichat-bench-serve-") as tmp:
        if not args.skip_memory:
            bench_memory(args, Path(tmp))
            print()
        if not args.skip_throughput:
            sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/roundrobin.py
            start = time.perf_counter()
            for i, which in enumerate(args.models):
                deadline = None
                if args.budget_s:  # this model's share of what is left, by the cost of the models still to run
                    left = args.budget_s - (time.perf_counter() - start)
                    share = BUDGET_WEIGHT[which] / sum(BUDGET_WEIGHT[m] for m in args.models[i:])
                    deadline = time.perf_counter() + left * share
                report["models"][which] = bench_throughput(args, Path(tmp), which, deadline)
                report["throughput_s"] = time.perf_counter() - start
                write_json(args.json, report)
            print(f"\nthroughput part: {time.perf_counter() - start:.0f} s", flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
