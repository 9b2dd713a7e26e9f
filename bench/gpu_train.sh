#!/usr/bin/env bash
# GPU checks of training, for a machine with one CUDA GPU (run from the repository root):
#   0. tests/test_train_loss.py  the losses against the plain path; on CUDA also cut-cross-entropy's Triton
#                                kernel (--loss fused: 16-bit operands, GPT-J's folded bias) against the chunked loss;
#   1. bench/train.py --gpu      bloomz-7b1 shape, bf16 LoRA: vichat vs the Trainer + peft peer, tokens/s, MFU,
#                                peak memory and the planner's error;
#   2. bench/memory.py --cuda    the memory model against torch.cuda.max_memory_allocated (fp16/bf16, all losses);
#   3. a 20-step `vichat train` with an int8 base through DeepSpeed ZeRO-2 (deepspeed launcher, 1 GPU) on random
#      weights of bloomz-7b1's shape, then the planner's prediction for that run next to the measured peak.
# Needs: pip install -e '.[fused,test]' for --loss fused (cut-cross-entropy) and step 0; ~16 GB disk for the random checkpoint.
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

$PY -m pytest -q -rs tests/test_train_loss.py 2>&1 | tee "$OUT/loss_tests.txt" || true  # a failure is recorded there; the rest still runs
$PY bench/train.py --gpu --json "$OUT/train.json" 2>&1 | tee "$OUT/train.txt"
$PY bench/memory.py --cuda --json "$OUT/memory.json" 2>&1 | tee "$OUT/memory.txt" || true  # prints its errors

WORK=$(mktemp -d)
$PY - "$WORK" <<'PYEOF'
import sys, random
from pathlib import Path
import torch
from transformers import BloomConfig, BloomForCausalLM
sys.path.insert(0, ".")
from vichat.data.loading import load
from vichat.data.tokenizers import train_bpe_tokenizer
from vichat.data.prepare import write_jsonl_atomic
work = Path(sys.argv[1])
import os
data = Path(os.environ.get("VICHAT_SHARED_DATA", "../shared/data")) / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"
records = random.Random(0).sample(load(str(data)).records, 360)
tok = train_bpe_tokenizer([t for r in records for t in (r.instruction, r.output)], vocab_size=4000, style="bloom")
cfg = BloomConfig(n_layer=30, hidden_size=4096, n_head=32, vocab_size=250_880, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
with torch.device("cuda"):
    torch.set_default_dtype(torch.float16)
    model = BloomForCausalLM(cfg)
model.save_pretrained(work / "base")
tok.save_pretrained(work / "base")
write_jsonl_atomic(work / "data" / "train.jsonl", records[:320])
write_jsonl_atomic(work / "data" / "validation.jsonl", records[320:])
PYEOF
# 320 records / (micro 4 x accumulation 4) = 20 steps.
FLAGS=(--base-model bloomz-7b1-mt --base-path "$WORK/base" --data "$WORK/data" --output-dir "$WORK/run"
       --load-in 8bit --compute-dtype fp16 --zero-stage 2 --total-batch-size 16 --micro-batch-size 4 --epochs 1
       --warmup-steps 2 --logging-steps 1 --eval-steps 20 --save-steps 20 --gpus 1 --group-by-length)
$PY -m vichat.cli train "${FLAGS[@]}" --dry-run | tee "$OUT/int8_plan.txt"
$PY - "$WORK" "$OUT" <<'PYEOF' &
import subprocess, sys, time
# Peak GPU memory of the training process, sampled by nvidia-smi (the process's own allocator peak is not visible here).
peak, end = 0, time.time() + 3600
while time.time() < end:
    try:
        used = int(subprocess.check_output(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]).split()[0])
    except Exception:
        break
    peak = max(peak, used)
    open(sys.argv[2] + "/int8_peak_mib.txt", "w").write(str(peak))
    time.sleep(0.5)
PYEOF
SAMPLER=$!
deepspeed --num_gpus 1 --no_local_rank --module vichat.train.launch "${FLAGS[@]}" 2>&1 | tee "$OUT/int8_train.txt"
kill $SAMPLER || true
echo "int8 ZeRO-2 run: nvidia-smi peak $(cat "$OUT/int8_peak_mib.txt") MiB (includes the CUDA context); plan above"
grep -h "tokens/s" "$OUT/int8_train.txt" | tail -3
