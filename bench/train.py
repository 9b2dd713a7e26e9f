"""Training throughput and memory: vichat (on transformers.Trainer) against the peer a practitioner uses.

    python bench/train.py                        # CPU: real length mix, equal micro-batch
    python bench/train.py --big-vocab            # CPU: BLOOM's 250,880 vocabulary; peak memory per micro-batch
    python bench/train.py --gpu                  # one GPU: bloomz-7b1 shape, bf16 LoRA (bench/train_gpu.py)
    python bench/train.py --gpu --smoke          # the same code on a CPU, tiny shape: checks it runs

The peer is ``transformers.Trainer`` + peft with ``DataCollatorForSeq2Seq`` (dynamic padding) and
length-grouped sampling (``train_sampling_strategy="group_by_length"``), the model's own loss (token-
weighted across accumulation through ``num_items_in_batch``). vichat is :func:`vichat.train.trainer.run`
itself: its length-grouped batch plan and its ``--loss`` (chunked on CPU: no full logits; ``plain``
shown too, to separate the effect of batching from that of the loss). Same model (random-weight
BLOOM), same records (Vietnamese Alpaca, the real length mix), same LoRA (r=8, alpha 16, dropout
0.05 on ``query_key_value``), AdamW, lr, warm-up, total batch, one epoch.

Every loop runs in its own process: useful (non-padding) tokens per second over the training steps
only (both timed by a callback from the step's start to its end), and the process's peak resident
memory above what it held after loading the model (``VmHWM``), so weights count the same for all.
``--big-vocab`` repeats the run at several micro-batches (``--micros``) with a 250,880-word vocabulary and
reports, for a memory budget (``--budget-gib``), the largest micro-batch each fits and its tokens/s.
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

DEFAULT_DATA = Path(os.environ.get("VICHAT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("VICHAT_BENCH_DATA", str(DEFAULT_DATA)),
                   help="JSONL of instruction records (default: ../shared/data/.../vi_alpaca_gpt4vn.jsonl)")
    p.add_argument("--records", type=int, default=300, help="training records (default 300)")
    p.add_argument("--val-records", type=int, default=None,
                   help="held-out records for the final loss (default 50; --gpu --smoke: 8)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--total-batch", type=int, default=None, help="examples per optimizer step (default 16; --smoke: 8)")
    p.add_argument("--micro", type=int, default=None, help="micro-batch (default 8; --smoke: 4)")
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
    p.add_argument("--big-vocab", action="store_true", help="CPU: 250,880-word vocabulary, micro-batches 1-8, memory")
    p.add_argument("--budget-gib", type=float, default=2.0, help="--big-vocab: memory budget above the model")
    p.add_argument("--micros", default="1,2,4,8", help="--big-vocab: the micro-batches to measure")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true", help="bloomz-7b1 shape, bf16, one GPU (see bench/train_gpu.py)")
    p.add_argument("--smoke", action="store_true", help="--gpu: run the same code on the CPU with a tiny shape, fp32")
    p.add_argument("--gpu-records", type=int, default=None, help="--gpu: training records (default 6144; --smoke: 32)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="--gpu: train both sides on the first N x total-batch records only")
    p.add_argument("--time-limit", type=float, default=90.0,
                   help="--gpu: stop a side after this many seconds of timed steps (default 90; 0: no limit)")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="--gpu: gradient checkpointing for both sides; auto = off when the plan fits the GPU without it")
    p.add_argument("--loss", choices=("auto", "fused", "chunked", "plain"), default="auto",
                   help="--gpu: vichat's --loss (auto: fused on CUDA when cut-cross-entropy is installed, else chunked)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="--gpu: the device's dense bf16 peak for MFU (default: known from its name; H100/H200 989)")
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


# --------------------------------------------------------------------------- one loop per process


def _rss() -> tuple[int, int]:
    from devices import hwm_and_rss

    return hwm_and_rss()


class _StepTimer:
    """A Trainer callback: seconds inside optimizer steps (start of the first micro-batch to the end)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            seconds = 0.0
            _t = 0.0
            losses: list = []

            def on_step_begin(self, args, state, control, **kw):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.seconds += time.perf_counter() - self._t

        return Timer()


def peer_loop(spec: dict) -> dict:
    """transformers.Trainer + peft, DataCollatorForSeq2Seq, group_by_length: the practitioner's setup."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    torch.set_num_threads(spec["threads"])
    tok = AutoTokenizer.from_pretrained(spec["base"])
    train = [json.loads(line) for line in Path(spec["train"]).read_text().splitlines()]
    val = [json.loads(line) for line in Path(spec["val"]).read_text().splitlines()]
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["base"])
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"],
                                             task_type="CAUSAL_LM"))
    feats = [{k: e[k] for k in ("input_ids", "attention_mask", "labels")} for e in train]
    args = TrainingArguments(
        output_dir=spec["out"], per_device_train_batch_size=spec["micro"],
        gradient_accumulation_steps=spec["accumulation"], num_train_epochs=1, learning_rate=spec["lr"],
        warmup_steps=spec["warmup"], lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", use_cpu=True, train_sampling_strategy="group_by_length",
        seed=spec["seed"], remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0)
    timer = _StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=feats, processing_class=tok, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    _, before = _rss()
    Path("/proc/self/clear_refs").write_text("5")
    trainer.train()
    peak, _ = _rss()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = sum(len(e["input_ids"]) for e in train)
    import contextlib

    return {"tokens_per_second": tokens / timer.seconds, "seconds": timer.seconds, "steps": trainer.state.global_step,
            "losses": losses, "val_loss": eval_loss(model, tok, val, spec["micro"], "cpu", contextlib.nullcontext),
            "peak_bytes": peak - before}


def vichat_loop(spec: dict) -> dict:
    """vichat.train.trainer.run itself."""
    import torch

    from vichat.train.trainer import TrainingRun

    torch.set_num_threads(spec["threads"])
    cfg = bench_config(argparse.Namespace(**spec["args"]), base_model="bloomz-560m", base_path=spec["base"],
                       data=spec["data"], output_dir=spec["out"], device="cpu", load_in="none", compute_dtype="fp32",
                       gradient_checkpointing=False, micro_batch_size=spec["micro"], loss=spec["loss"])
    run = TrainingRun(cfg, registry=_registry(), show_progress=False)
    run.trainer = run.build_trainer()  # as the peer's: the Trainer exists before the measurement starts
    _, before = _rss()
    Path("/proc/self/clear_refs").write_text("5")
    result = run.train()
    peak, _ = _rss()
    return {"tokens_per_second": result.tokens_per_second, "seconds": result.train_seconds,
            "steps": result.global_step, "losses": [e["loss"] for e in result.log if "loss" in e],
            "val_loss": result.final_val_loss, "peak_bytes": peak - before}


def _registry():
    from vichat.plugins import get_registry

    return get_registry()


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


def run_child(loop: str, spec: dict) -> dict:
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MALLOC_MMAP_THRESHOLD_="65536",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", loop, json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{loop} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- CPU


LOOPS = {"vichat": ("vichat (chunked loss)", "chunked"), "vichat-plain": ("vichat (plain loss)", "plain"),
         "peer": ("Trainer + peft peer", None)}


def _setup(args: argparse.Namespace, vocab: int | None) -> dict:
    """Records, tokenizer, random-weight base and tokenised files in a temp folder."""
    import torch
    from transformers import BloomForCausalLM

    from vichat.train.data import tokenize_all

    records = load_records(args.data, args.records + args.val_records, args.seed)
    train, val = records[: args.records], records[args.records :]
    work = Path(tempfile.mkdtemp(prefix="vichat-bench-train-"))
    tok = train_tokenizer(records, args.vocab)
    torch.manual_seed(args.seed)
    base = work / "base"
    config = bloom_config(tok, args.layers, args.hidden, max(1, args.hidden // 32), vocab=vocab)
    BloomForCausalLM(config).save_pretrained(base)
    tok.save_pretrained(base)
    data = write_prepared(work / "data", train, val)
    for name, recs in (("train", train), ("val", val)):
        with open(work / f"{name}.tok.jsonl", "w") as fh:
            for e in tokenize_all(recs, tok, "chat", args.max_length):
                fh.write(json.dumps(e) + "\n")
    lengths = [len(json.loads(x)["input_ids"]) for x in (work / "train.tok.jsonl").read_text().splitlines()]
    return {"work": work, "base": str(base), "data": str(data), "tok": tok, "lengths": lengths,
            "model": f"BLOOM {args.layers} layers x {args.hidden} hidden, vocab {config.vocab_size:,}, random weights, fp32",
            "train": len(train), "val": len(val)}


def _spec(args: argparse.Namespace, s: dict, loop: str, micro: int, attempt: int) -> dict:
    return {"threads": args.threads or 1, "base": s["base"], "data": s["data"], "micro": micro,
            "accumulation": args.total_batch // micro, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
            "train": str(s["work"] / "train.tok.jsonl"), "val": str(s["work"] / "val.tok.jsonl"),
            "out": str(s["work"] / f"{loop}-{micro}-{attempt}"), "loss": LOOPS[loop][1],
            "args": {k: v for k, v in vars(args).items() if k != "json_out"}}


def cpu_main(args: argparse.Namespace) -> None:
    s = _setup(args, None)
    best: dict[str, dict] = {}
    for attempt in range(args.repeat):  # alternate the loops: the machine may be shared
        for loop in LOOPS:
            r = run_child(loop, _spec(args, s, loop, args.micro, attempt))
            print(f"attempt {attempt + 1}/{args.repeat}: {LOOPS[loop][0]}: {r['tokens_per_second']:,.0f} tokens/s, "
                  f"peak {r['peak_bytes'] / 2**20:,.0f} MiB", flush=True)
            if loop not in best or r["tokens_per_second"] > best[loop]["tokens_per_second"]:
                best[loop] = r
    lengths = s["lengths"]
    print(f"\nmodel: {s['model']}\ndata: {s['train']} train / {s['val']} held-out records of {Path(args.data).name}, "
          f"tokens per record mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)} (max length {args.max_length})"
          f"\nbatch: {args.total_batch} = micro {args.micro} x accumulation {args.total_batch // args.micro}, 1 epoch, "
          f"lr {args.lr:g}; {args.threads or 1} thread(s), load average {os.getloadavg()[0]:.1f}; best of {args.repeat}")
    print(f"{'loop':>24}  {'tokens/s':>9}  {'peak MiB':>8}  {'steps':>5}  {'mean train loss':>15}  {'held-out loss':>13}")
    for loop, r in best.items():
        print(f"{LOOPS[loop][0]:>24}  {r['tokens_per_second']:>9,.0f}  {r['peak_bytes'] / 2**20:>8,.0f}  {r['steps']:>5}  "
              f"{sum(r['losses']) / len(r['losses']):>15.4f}  {r['val_loss']:>13.4f}")
    ratio = best["vichat"]["tokens_per_second"] / best["peer"]["tokens_per_second"]
    print(f"\nvichat / peer, useful tokens/s at equal micro-batch {args.micro}: {ratio:.2f}x (goal >= 1.2x)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": best, "ratio": ratio}, indent=2))


def big_vocab_main(args: argparse.Namespace) -> None:
    """BLOOM's 250,880-word vocabulary: peak memory and tokens/s at micro-batches 1..8, and the largest
    micro-batch each loop fits in ``--budget-gib``."""
    s = _setup(args, 250_880)
    budget = args.budget_gib * 2**30
    table: dict[str, dict[int, dict]] = {loop: {} for loop in LOOPS}
    micros = [int(m) for m in args.micros.split(",")]
    for micro in micros:
        for loop in LOOPS:
            r = run_child(loop, _spec(args, s, loop, micro, 0))
            table[loop][micro] = r
            print(f"micro {micro}: {LOOPS[loop][0]}: {r['tokens_per_second']:,.0f} tokens/s, "
                  f"peak {r['peak_bytes'] / 2**20:,.0f} MiB", flush=True)
    print(f"\nmodel: {s['model']}; {s['train']} records; budget {args.budget_gib:g} GiB above the loaded model")
    print(f"{'loop':>24}  " + "  ".join(f"{'micro ' + str(m):>17}" for m in micros) + "  largest fitting")
    largest = {}
    for loop, rows in table.items():
        fits = [m for m, r in rows.items() if r["peak_bytes"] <= budget]
        largest[loop] = max(fits) if fits else None
        cells = "  ".join(f"{r['peak_bytes'] / 2**20:>7,.0f} MiB {r['tokens_per_second']:>5,.0f}/s" for r in rows.values())
        print(f"{LOOPS[loop][0]:>24}  {cells}  {largest[loop]}")
    for m in micros:
        ratio = table["vichat"][m]["peak_bytes"] / table["peer"][m]["peak_bytes"]
        print(f"micro {m}: vichat peak / peer peak = {ratio:.2f} (goal <= 0.5)")
    if largest["vichat"] and largest["peer"]:
        v, p = table["vichat"][largest["vichat"]], table["peer"][largest["peer"]]
        print(f"at the largest micro-batch each fits in {args.budget_gib:g} GiB (vichat {largest['vichat']}, peer "
              f"{largest['peer']}): useful tokens/s {v['tokens_per_second'] / p['tokens_per_second']:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"table": table, "largest": largest}, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _settle_defaults(args)
    if args.child:
        loop, spec = args.child[0], json.loads(args.child[1])
        print(json.dumps((peer_loop if loop == "peer" else vichat_loop)(spec)))
        return
    if args.total_batch % args.micro:
        raise SystemExit("--total-batch must be a multiple of --micro")
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: not found; pass --data or set VICHAT_BENCH_DATA")
    if args.smoke and not args.gpu:
        raise SystemExit("--smoke rehearses --gpu on the CPU: pass --gpu --smoke")
    if args.gpu:
        from train_gpu import gpu_main

        doc = gpu_main(args, args.json_out)
        if not all(row["finite"] for row in doc["rows"].values()):
            raise SystemExit("a training or held-out loss is not finite: the figures above are not valid")
        return
    (big_vocab_main if args.big_vocab else cpu_main)(args)


def _settle_defaults(args: argparse.Namespace) -> None:
    """Fill the flags whose default depends on the mode (``--gpu --smoke`` is small)."""
    smoke = args.gpu and args.smoke
    defaults = {"val_records": 8 if smoke else 50, "micro": 4 if smoke else 8, "total_batch": 8 if smoke else 16,
                "gpu_records": 32 if smoke else 6144}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
