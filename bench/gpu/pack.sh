#!/usr/bin/env bash
# Pack what bench/gpu/check.sh needs on an OFFLINE GPU machine that already has PyTorch (with CUDA),
# Triton, accelerate, huggingface_hub, tokenizers, safetensors, numpy, pytest and the usual scientific
# stack, but nothing that vichat adds: run it here (with package-registry access), copy the repository
# with its .gpu-bundle/ folder over, and run `bash bench/gpu/check.sh` there.
#
#   bash bench/gpu/pack.sh                      # for python 3.12 on x86-64 Linux (the default)
#   PYVER=3.11 bash bench/gpu/pack.sh           # for another python (pydantic-core is compiled per version)
#
# Writes .gpu-bundle/ (git-ignored):
#   site.tar.gz     a `pip install --target` folder: vichat itself (a wheel of this checkout, with its
#                   plugins' entry points) and the versions this checkout is tested with of transformers,
#                   peft, bitsandbytes (only its CPU and CUDA 13 libraries: the others are 150 MB),
#                   DeepSpeed (pure Python: its ops are never built, the optimizer is torch's AdamW),
#                   cut-cross-entropy and DeepSpeed's own needs (pydantic, hjson).
#   records.jsonl.gz  RECORDS Vietnamese Alpaca records (default 1200) for the training benches, read
#                   from $VICHAT_SHARED_DATA (default ../shared/data); the data never enters the repository.
#   MANIFEST.txt    versions, sizes and the python it was packed for.
# The versions are read from this machine's .venv (what the test suite ran against).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
RECORDS=${RECORDS:-1200}
BNB_KEEP=${BNB_KEEP:-"cpu cuda130 cuda132"}
VENV_PY=${VENV_PY:-.venv/bin/python}
LIMIT_MB=${LIMIT_MB:-58}   # the bundle plus the repository must travel in 64 MiB
DATA_DIR=${VICHAT_SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=${BUNDLE:-.gpu-bundle}
TAG=${PYVER/./}

[ -x "$VENV_PY" ] || { echo "pack.sh: $VENV_PY not found: run \`make setup\` first (the versions are read from it)" >&2; exit 2; }
version() { "$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PKGS=(transformers peft bitsandbytes deepspeed cut-cross-entropy pydantic pydantic-core annotated-types
      typing-inspection hjson)
SPECS=()
for p in "${PKGS[@]}"; do SPECS+=("$p==$(version "$p")"); done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/wheels" "$WORK/site"
echo "pack.sh: wheels for python $PYVER: ${SPECS[*]}"
# DeepSpeed is published as a source archive only: build its (pure-Python) wheel here.
DS_BUILD_OPS=0 "$VENV_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "deepspeed==$(version deepspeed)"
BINARY=()
for s in "${SPECS[@]}"; do [[ $s == deepspeed==* ]] || BINARY+=("$s"); done
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --abi "cp$TAG" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$WORK/wheels" "${BINARY[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" .
"$VENV_PY" -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --abi "cp$TAG" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    --target "$WORK/site" "$WORK"/wheels/*.whl 2> >(grep -v "is ignored: it is neither" >&2)
# bitsandbytes ships one library per CUDA/ROCm/XPU version; keep those named in BNB_KEEP.
for lib in "$WORK"/site/bitsandbytes/libbitsandbytes_*.so; do
    name=$(basename "$lib" .so); name=${name#libbitsandbytes_}
    [[ " $BNB_KEEP " == *" $name "* ]] || rm -f "$lib"
done
rm -rf "$WORK/site/bin"   # console scripts carry this machine's python path; check.sh runs modules
find "$WORK/site" -name __pycache__ -prune -exec rm -rf {} +

rm -rf "$OUT"
mkdir -p "$OUT"
tar -czf "$OUT/site.tar.gz" -C "$WORK/site" .
SOURCE="$DATA_DIR/vi_instructions/vi_alpaca_gpt4vn.jsonl"
[ -f "$SOURCE" ] || { echo "pack.sh: $SOURCE not found: set VICHAT_SHARED_DATA to the shared data folder" >&2; exit 2; }
# A random sample (seed 0), not the file's head: the benches want the real length mix.
"$VENV_PY" - "$SOURCE" "$RECORDS" <<'PYEOF' | gzip -9 > "$OUT/records.jsonl.gz"
import random, sys
lines = [l for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
n = int(sys.argv[2])
if len(lines) < n:
    sys.exit(f"{sys.argv[1]}: {len(lines)} records, {n} asked for (RECORDS)")
sys.stdout.write("".join(random.Random(0).sample(lines, n)))
PYEOF
{
    echo "python $PYVER (cp$TAG), x86-64 manylinux; packed $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
    printf '%s\n' "${SPECS[@]}" "vichat==$(version vichat) (this checkout)" "bitsandbytes libraries kept: $BNB_KEEP"
    echo "records: $RECORDS from $SOURCE (random sample, seed 0)"
    (cd "$OUT" && ls -l site.tar.gz records.jsonl.gz | awk '{print $9": "$5" bytes"}')
} > "$OUT/MANIFEST.txt"
cat "$OUT/MANIFEST.txt"
bundle=$(du -cb "$OUT" | tail -1 | cut -f1)
repo=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "bundle $((bundle / 1000000)) MB + repository $((repo / 1000000)) MB"
if [ $(((bundle + repo) / 1000000)) -gt "$LIMIT_MB" ]; then
    echo "pack.sh: bundle + repository exceed ${LIMIT_MB} MB (LIMIT_MB)" >&2
    exit 1
fi
