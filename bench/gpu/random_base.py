"""A random-weight BLOOM of bloomz-7b1's shape (or a small one), its tokenizer and a prepared data folder.

For runs that check the training path and its memory on the real shapes without the real weights
(which a machine without the hub cannot download): the tokenizer is a BPE trained on the records
(the model's vocabulary stays 250,880 rows), the weights are BLOOM's own random initialisation in
fp16, saved as ``OUT/base``; ``OUT/data`` holds ``train.jsonl`` and ``validation.jsonl``.

    python bench/gpu/random_base.py --records records.jsonl --out /tmp/int8 --train 320 --val 40
    python bench/gpu/random_base.py --records records.jsonl --out /tmp/int8 --shape small   # CPU check
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: name -> (layers, hidden, heads, vocab or None for the tokenizer's size)
SHAPES = {"bloomz-7b1": (30, 4096, 32, 250_880), "small": (2, 64, 4, None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", required=True, help="JSONL instruction records")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bloomz-7b1")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--val", type=int, default=40)
    ap.add_argument("--device", default=None, help="where to build the weights (default: cuda if available)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from vichat.data.loading import load
    from vichat.data.prepare import write_jsonl_atomic
    from vichat.data.tokenizers import train_bpe_tokenizer

    records = load(args.records).records
    need = args.train + args.val
    if len(records) < need:
        raise SystemExit(f"{args.records}: {len(records)} records, {need} needed (--train + --val)")
    records = random.Random(0).sample(records, need)
    tok = train_bpe_tokenizer([t for r in records for t in (r.instruction, r.input, r.output) if t],
                              vocab_size=4000, style="bloom")
    layers, hidden, heads, vocab = SHAPES[args.shape]
    cfg = BloomConfig(n_layer=layers, hidden_size=hidden, n_head=heads, vocab_size=vocab or len(tok),
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(torch.float16 if device.startswith("cuda") else torch.float32)
        try:
            model = BloomForCausalLM(cfg)
        finally:
            torch.set_default_dtype(previous)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise SystemExit(f"random weights are not finite in {bad[:3]}")
    model.save_pretrained(args.out / "base")
    tok.save_pretrained(args.out / "base")
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(args.out / "data" / "train.jsonl", records[: args.train])
    write_jsonl_atomic(args.out / "data" / "validation.jsonl", records[args.train :])
    n = sum(p.numel() for p in model.parameters())
    print(f"random BLOOM {args.shape}: {layers} x {hidden}, vocab {cfg.vocab_size:,}, {n / 1e9:.2f}B parameters, "
          f"{next(model.parameters()).dtype}, saved to {args.out / 'base'}; {args.train} + {args.val} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
