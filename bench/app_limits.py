"""Benchmark: fitting a long conversation into the context window, one pass against the former
one-re-encode-per-dropped-turn loop, on a byte-level BPE tokenizer (BLOOM style) trained locally.

Two histories, measured in one run (median of --repeats):

  visitor   8 turns of ordinary size (what the page sends)
  attack    40 turns of 20,000 characters (what a script could send before the input limits)

Both implementations must return the same prompt; the ratio old / new is printed. Not a timed
test: run it by hand, e.g.
  OMP_NUM_THREADS=1 .venv/bin/python bench/app_limits.py
"""

from __future__ import annotations

import argparse
import statistics
import time

from vichat.data.templates import CHAT
from vichat.data.tokenizers import sample_texts, train_bpe_tokenizer
from vichat.serve.history import fit_prompt, fold_history


def former_fit(encode, template, message, history, *, context, max_new_tokens):  # noqa: ANN001
    """The previous algorithm (turns only; the message always fit here)."""
    budget = context - max_new_tokens
    for dropped in range(len(history) + 1):
        text = fold_history(template, message, history[dropped:])
        ids = encode(text)
        if len(ids) <= budget:
            return ids, dropped
    raise AssertionError("the message alone should fit in this benchmark")


def timed(fn, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context", type=int, default=2048)
    args = ap.parse_args()
    tok = train_bpe_tokenizer(sample_texts(), vocab_size=600, style="bloom")

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    sentence = "Hà Nội là thủ đô của Việt Nam, nổi tiếng với phố cổ và hồ Hoàn Kiếm. "
    cases = {
        "visitor": [(f"Câu hỏi {k}: " + sentence * 2, sentence * 8) for k in range(8)],
        "attack": [("x" * 10_000, sentence * (10_000 // len(sentence))) for _ in range(40)],
    }
    print(f"{'history':10s} {'turns':>5s} {'chars':>9s} {'former s':>9s} {'one-pass s':>10s} {'ratio':>7s}  dropped")
    for name, history in cases.items():
        message = "Kể thêm về Hà Nội?"
        old_s, (old_ids, old_dropped) = timed(lambda: former_fit(
            encode, CHAT, message, history, context=args.context, max_new_tokens=256), args.repeats)
        new_s, fitted = timed(lambda: fit_prompt(
            encode, CHAT, message, history, context=args.context, max_new_tokens=256), args.repeats)
        assert (fitted.ids, fitted.turns_dropped) == (old_ids, old_dropped), name
        chars = sum(len(q) + len(a) for q, a in history)
        print(f"{name:10s} {len(history):5d} {chars:9d} {old_s:9.3f} {new_s:10.3f} {old_s / new_s:6.1f}x  "
              f"{fitted.turns_dropped}")


if __name__ == "__main__":
    main()
