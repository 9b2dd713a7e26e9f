"""Precision and recall of the broken-code detector on the hand-labelled Vietnamese Alpaca sample.

    python bench/quality.py [--labels bench/vi_alpaca_code_labels.jsonl] [--data FILE]

The labels (bench/vi_alpaca_code_labels.jsonl) refer to lines of the shared data file
``vi_instructions/vi_alpaca_gpt4vn.jsonl`` (from $VICHAT_SHARED_DATA, else ../shared/data) by line
number and hash; the text is read from there. Also counts the records flagged in the whole file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vichat.data.quality import record_code_problems  # noqa: E402
from vichat.data.quality_eval import as_fields, evaluate  # noqa: E402


def main() -> None:
    shared = Path(os.environ.get("VICHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO / "bench" / "vi_alpaca_code_labels.jsonl"))
    parser.add_argument("--data", default=str(shared / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"))
    parser.add_argument("--no-scan", action="store_true", help="Only score the labels; skip the whole-file count.")
    args = parser.parse_args()

    result = evaluate(args.labels, args.data)
    print("\n".join(result.lines()))
    if args.no_scan:
        return
    start = time.perf_counter()
    flagged, rules, total = 0, Counter(), 0
    with open(args.data, encoding="utf-8") as fh:
        for line in fh:
            total += 1
            hits = record_code_problems(as_fields(json.loads(line)))
            if hits:
                flagged += 1
                rules.update({h.rule for h in hits})
    took = time.perf_counter() - start
    print(f"whole file: {flagged} of {total} records flagged ({100 * flagged / total:.2f}%) in {took:.1f}s")
    print("  records per rule: " + ", ".join(f"{r} {n}" for r, n in rules.most_common()))


if __name__ == "__main__":
    main()
