"""Training throughput: vichat's loop against an alpaca-lora-style loop, same model, data and machine.

    python bench/train.py                      # CPU: a small random-weight BLOOM, 300 Vietnamese records
    python bench/train.py --gpu                # one GPU: a bloomz-7b1-shaped random-weight model in bf16

Both loops train the same LoRA (r=8, alpha 16, dropout 0.05 on query_key_value) with AdamW, the
same warm-up/decay schedule and total batch, for one epoch over the same records tokenised the same
way (loss on the response only, max length 512):

* **vichat**: :func:`vichat.train.trainer.run` itself, length-grouped batches (``--group-by-length``),
  right-padded to the longest sample of each micro-batch;
* **alpaca-lora style**: every sample padded to 512 tokens, random order, the model's own mean
  loss per micro-batch divided by the accumulation steps (what ``Trainer`` does for alpaca-lora).

It prints useful (non-padding) tokens per second of each and their ratio, and the losses (mean of
the per-step train losses, and the final loss on the same held-out records) so one can see both
loops learn the same thing. Only the training steps are timed (not loading, tokenising, evaluating
or saving).

``--gpu`` also reports MFU with the LoRA convention of 4N FLOPs per token (forward 2N + backward
through the activations 2N; the frozen base gets no weight gradients), N = the base's parameters,
against 989 TFLOP/s (H100 SXM dense bf16). With gradient checkpointing the GPU really does ~6N
(the forward is recomputed); 4N counts useful work only. The GPU mode has not been run on a GPU by
its author (no GPU was available): treat its first numbers with care.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

H100_BF16_FLOPS = 989e12
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("VICHAT_BENCH_DATA", str(DEFAULT_DATA)),
                   help="JSONL of instruction records (default: ../shared/data/.../vi_alpaca_gpt4vn.jsonl)")
    p.add_argument("--records", type=int, default=300, help="training records (default 300)")
    p.add_argument("--val-records", type=int, default=50, help="held-out records for the final loss (default 50)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--total-batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layers", type=int, default=4, help="CPU model: BLOOM layers (default 4)")
    p.add_argument("--hidden", type=int, default=256, help="CPU model: hidden size (default 256)")
    p.add_argument("--vocab", type=int, default=4000, help="BPE vocabulary trained on the records (default 4000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--base", default=None, help="CPU: a local BLOOM-family model folder (with its tokenizer) to use "
                   "instead of random weights, e.g. the tiny base from `vichat tiny build`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="CPU: run both loops N times, alternating, and keep each "
                   "one's best tokens/s (for a shared machine)")
    p.add_argument("--gpu", action="store_true", help="bloomz-7b1 shape, bf16, one GPU (see the module docstring)")
    p.add_argument("--gpu-records", type=int, default=1024, help="--gpu: training records (default 1024)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this JSON file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data and model


def load_records(path: str, n: int, seed: int) -> list[Any]:
    from vichat.data.loading import load

    records = load(path).records
    if len(records) < n:
        raise SystemExit(f"{path}: {len(records)} records, {n} needed")
    return random.Random(seed).sample(records, n)


def train_tokenizer(records: list[Any], vocab: int) -> Any:
    from vichat.data.templates import CHAT, render_prompt
    from vichat.data.tokenizers import train_bpe_tokenizer

    texts = [render_prompt(CHAT, "")] + [t for r in records for t in (r.instruction, r.input, r.output) if t]
    return train_bpe_tokenizer(texts, vocab_size=vocab, style="bloom")


def bloom_config(tok: Any, layers: int, hidden: int, heads: int, vocab: int | None = None) -> Any:
    from transformers import BloomConfig

    return BloomConfig(n_layer=layers, hidden_size=hidden, n_head=heads, vocab_size=vocab or len(tok),
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def write_prepared(folder: Path, train: list[Any], val: list[Any]) -> Path:
    from vichat.data.prepare import write_jsonl_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(folder / "train.jsonl", train)
    write_jsonl_atomic(folder / "validation.jsonl", val)
    return folder


def bench_config(args: argparse.Namespace, **values: Any) -> Any:
    from vichat.train.config import TrainConfig

    cfg = TrainConfig(
        max_length=args.max_length, total_batch_size=args.total_batch, micro_batch_size=args.micro, epochs=1,
        learning_rate=args.lr, warmup_steps=args.warmup, logging_steps=1, eval_steps=10**6, save_steps=10**6,
        save_total_limit=1, group_by_length=True, packing=False, zero_stage=0, seed=args.seed,
        lora_targets=("query_key_value",), gpus=1,
    )
    return replace(cfg, **values)


# --------------------------------------------------------------------------- the baseline loop


def alpaca_style_loop(model: Any, tok: Any, train: list[dict], val: list[dict], *, micro: int, accumulation: int,
                      cfg: Any, device: str, autocast: Any) -> dict[str, Any]:
    """Every sample padded to max_length, random order, mean loss per micro-batch / accumulation."""
    import torch

    from vichat.data.tokenize import DataCollatorForSFT
    from vichat.train.model import make_optimizer, make_scheduler

    collate = DataCollatorForSFT(tok, pad_to_multiple_of=cfg.max_length)  # every row becomes max_length long
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    batches = [order[i : i + micro] for i in range(0, len(order), micro)]
    steps = [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    scheduler = make_scheduler(optimizer, cfg, len(steps))
    model.train()
    losses, seconds, tokens = [], 0.0, 0
    for step in steps:
        started = time.perf_counter()
        step_loss = 0.0
        for idx in step:
            batch = {k: v.to(device) for k, v in collate([train[i] for i in idx]).items()}
            with autocast():
                loss = model(**batch, use_cache=False).loss  # mean over this micro-batch's response tokens
            (loss / len(step)).backward()
            step_loss += loss.detach().item() / len(step)
            tokens += sum(len(train[i]["input_ids"]) for i in idx)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        losses.append(step_loss)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "losses": losses,
            "val_loss": eval_loss(model, tok, val, micro, device, autocast), "steps": len(steps)}


def eval_loss(model: Any, tok: Any, examples: list[dict], micro: int, device: str, autocast: Any) -> float:
    """Mean loss per response token over ``examples`` (the trainer's definition)."""
    import torch

    from vichat.data.tokenize import DataCollatorForSFT
    from vichat.train.data import label_tokens
    from vichat.train.model import forward_logits, token_loss_sum

    collate = DataCollatorForSFT(tok)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), micro):
            chunk = examples[i : i + micro]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            with autocast():
                total += float(token_loss_sum(forward_logits(model, batch), batch["labels"]))
            count += sum(label_tokens(e) for e in chunk)
    model.train()
    return total / count


# --------------------------------------------------------------------------- reporting


def summarize(name: str, tokens_per_second: float, losses: list[float], val: float | None, steps: int) -> dict:
    return {"loop": name, "tokens_per_second": tokens_per_second, "steps": steps,
            "mean_train_loss": sum(losses) / len(losses), "last_train_loss": losses[-1], "val_loss": val}


def report(rows: list[dict], extra: dict[str, Any], json_out: str | None) -> None:
    vichat, base = rows
    ratio = vichat["tokens_per_second"] / base["tokens_per_second"]
    print()
    for k, v in extra.items():
        print(f"{k:>22}: {v}")
    print(f"{'loop':>22}  {'tokens/s':>10}  {'steps':>5}  {'mean train loss':>15}  {'last train loss':>15}  {'held-out loss':>13}")
    for r in rows:
        print(f"{r['loop']:>22}  {r['tokens_per_second']:>10,.0f}  {r['steps']:>5}  {r['mean_train_loss']:>15.4f}  "
              f"{r['last_train_loss']:>15.4f}  {r['val_loss']:>13.4f}")
    d_mean = abs(vichat["mean_train_loss"] - base["mean_train_loss"]) / base["mean_train_loss"]
    d_val = abs(vichat["val_loss"] - base["val_loss"]) / base["val_loss"]
    print(f"\nspeed-up (useful tokens/s): {ratio:.2f}x  (goal: >= 3x)")
    print(f"loss agreement: mean train loss differs by {100 * d_mean:.2f}%, held-out loss by {100 * d_val:.2f}%")
    for r in rows:
        if "mfu_4n" in r:
            print(f"{r['loop']}: MFU (4N convention, {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s) {100 * r['mfu_4n']:.1f}%")
    if json_out:
        Path(json_out).write_text(json.dumps({"rows": rows, "ratio": ratio, **extra}, indent=2))


# --------------------------------------------------------------------------- CPU


def cpu_main(args: argparse.Namespace) -> None:
    import contextlib

    import torch

    from vichat.train.data import tokenize_all
    from vichat.train.model import add_lora
    from vichat.train.trainer import run

    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_records(args.data, args.records + args.val_records, args.seed)
    train, val = records[: args.records], records[args.records :]
    work = Path(tempfile.mkdtemp(prefix="vichat-bench-train-"))
    if args.base:
        from transformers import AutoConfig, AutoTokenizer

        base_dir = Path(args.base)
        tok = AutoTokenizer.from_pretrained(base_dir)
        shape = AutoConfig.from_pretrained(base_dir)
        model_desc = f"{base_dir} ({shape.model_type}, {shape.num_hidden_layers} layers x {shape.hidden_size}), fp32"
    else:
        from transformers import BloomForCausalLM

        tok = train_tokenizer(records, args.vocab)
        torch.manual_seed(args.seed)
        base_dir = work / "base"
        BloomForCausalLM(bloom_config(tok, args.layers, args.hidden, max(1, args.hidden // 32))).save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        model_desc = f"BLOOM {args.layers} layers x {args.hidden} hidden, vocab {len(tok)}, random weights, fp32"
    data = write_prepared(work / "data", train, val)
    accumulation = args.total_batch // args.micro

    cfg = bench_config(args, base_model="bloomz-560m", model_path=str(base_dir), data=str(data),
                       output_dir=str(work / "vichat"), device="cpu", load_in="none", compute_dtype="fp32",
                       gradient_checkpointing=False)
    tr, va = (tokenize_all(x, tok, "chat", args.max_length) for x in (train, val))
    from transformers import AutoModelForCausalLM

    best: dict[str, dict] = {}
    for attempt in range(args.repeat):
        # vichat's loop, the real thing (a fresh output folder each time).
        result = run(replace(cfg, output_dir=str(work / f"vichat-{attempt}")), show_progress=False)
        losses = [e["loss"] for e in result.log if "loss" in e]
        row = summarize("vichat (length-grouped)", result.tokens_per_second, losses, result.final_val_loss,
                        result.global_step)
        # The baseline on the same base weights, LoRA init (same seed) and tokenised records.
        torch.manual_seed(args.seed)
        model = add_lora(AutoModelForCausalLM.from_pretrained(base_dir), cfg, ["query_key_value"])
        before = eval_loss(model, tok, va, args.micro, "cpu", contextlib.nullcontext)  # lora_B = 0: the base itself
        torch.manual_seed(args.seed)
        b = alpaca_style_loop(model, tok, tr, va, micro=args.micro, accumulation=accumulation, cfg=cfg, device="cpu",
                              autocast=contextlib.nullcontext)
        base_row = summarize("alpaca-lora (pad 512)", b["tokens_per_second"], b["losses"], b["val_loss"], b["steps"])
        print(f"attempt {attempt + 1}/{args.repeat}: vichat {row['tokens_per_second']:,.0f} tokens/s, "
              f"alpaca-lora style {base_row['tokens_per_second']:,.0f} tokens/s", flush=True)
        for r in (row, base_row):  # best of the attempts: the machine may be shared
            if r["loop"] not in best or r["tokens_per_second"] > best[r["loop"]]["tokens_per_second"]:
                best[r["loop"]] = r
    rows = list(best.values())
    lengths = [len(e["input_ids"]) for e in tr]
    report(rows, {
        "machine": f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average "
                   f"{os.getloadavg()[0]:.1f} at the end; best of {args.repeat} attempt(s)",
        "model": model_desc,
        "data": f"{len(train)} train / {len(val)} held-out records of {Path(args.data).name}",
        "tokens per record": f"mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)} (max length {args.max_length})",
        "batch": f"{args.total_batch} = micro {args.micro} x accumulation {accumulation}, 1 epoch, lr {args.lr:g}",
        "held-out loss before": f"{before:.4f}",
    }, args.json_out)


# --------------------------------------------------------------------------- GPU


def gpu_main(args: argparse.Namespace) -> None:
    """bloomz-7b1 shape (30 layers, hidden 4096, 32 heads, vocab 250,880), random weights, bf16."""
    import torch
    from transformers import BloomForCausalLM

    from vichat.hookspecs import hookimpl
    from vichat.plugins import build_registry
    from vichat.specs import Architecture, BaseModelSpec
    from vichat.train.data import tokenize_all
    from vichat.train.model import add_lora
    from vichat.train.trainer import run

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    records = load_records(args.data, args.gpu_records + args.val_records, args.seed)
    train, val = records[: args.gpu_records], records[args.gpu_records :]
    tok = train_tokenizer(records, args.vocab)
    config = bloom_config(tok, 30, 4096, 32, vocab=250_880)
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: 14 GB, not 28
        base = BloomForCausalLM(config)
        torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in base.parameters())
    work = Path(tempfile.mkdtemp(prefix="vichat-bench-train-gpu-"))
    data = write_prepared(work / "data", train, val)
    accumulation = args.total_batch // args.micro
    cfg = bench_config(args, base_model="bench-bloom-7b1", data=str(data), output_dir=str(work / "vichat"),
                       device="cuda", load_in="none", compute_dtype="bf16", gradient_checkpointing=True)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    # Baseline first, on a LoRA that is unloaded afterwards so vichat's run gets the clean base.
    torch.manual_seed(args.seed)
    model = add_lora(base, cfg, ["query_key_value"])
    tr, va = (tokenize_all(x, tok, "chat", args.max_length) for x in (train, val))
    b = alpaca_style_loop(model, tok, tr, va, micro=args.micro, accumulation=accumulation, cfg=cfg, device="cuda:0",
                          autocast=autocast)
    base = model.unload()
    del model
    torch.cuda.empty_cache()

    # vichat's loop on the same in-memory base, through a throw-away plugin whose loader returns it.
    spec = BaseModelSpec(name="bench-bloom-7b1", description="bloomz-7b1-shaped random weights (benchmark).",
                         hub_id="bench/bloom-7b1-random", lora_targets=("query_key_value",),
                         architecture=Architecture(family="bloom", n_layers=30, hidden_size=4096, n_heads=32,
                                                   vocab_size=250_880, max_positions=2048),
                         load=lambda spec, path=None, **options: (base, tok))

    class BenchPlugin:
        @hookimpl
        def register_base_models(self, register):
            register(spec)

    registry = build_registry(extra=[("bench", BenchPlugin())])
    torch.cuda.reset_peak_memory_stats()
    result = run(cfg, registry=registry, show_progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**30
    losses = [e["loss"] for e in result.log if "loss" in e]
    rows = [summarize("vichat (length-grouped)", result.tokens_per_second, losses, result.final_val_loss,
                      result.global_step),
            summarize("alpaca-lora (pad 512)", b["tokens_per_second"], b["losses"], b["val_loss"], b["steps"])]
    for r in rows:
        r["mfu_4n"] = r["tokens_per_second"] * 4 * n_params / H100_BF16_FLOPS
    report(rows, {
        "machine": f"{torch.cuda.get_device_name(0)} (1 GPU)",
        "model": f"BLOOM 30 x 4096, vocab 250,880 ({n_params / 1e9:.2f}B params), random weights, bf16, "
                 "gradient checkpointing",
        "data": f"{len(train)} train / {len(val)} held-out records of {Path(args.data).name}",
        "batch": f"{args.total_batch} = micro {args.micro} x accumulation {accumulation}, 1 epoch, lr {args.lr:g}",
        "vichat peak memory": f"{peak:.1f} GiB",
    }, args.json_out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.total_batch % args.micro:
        raise SystemExit("--total-batch must be a multiple of --micro")
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: not found; pass --data or set VICHAT_BENCH_DATA")
    (gpu_main if args.gpu else cpu_main)(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
