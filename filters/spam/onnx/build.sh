#!/usr/bin/env bash
# Rebuild sift's ONNX spam model end to end:
#   1. the Python venv with onnxruntime/onnx/numpy (setup-runtime.sh);
#   2. the SpamAssassin corpus (../fetch-data.sh) and an optimised sift;
#   3. `sift export-features spam` at BITS (default 14, so D = 2^14): the
#      sparse vectors of sift's own featurizer for all of SpamAssassin + SMS;
#   4. train.py on all of it -> filters/spam/model.onnx (threshold from
#      5-fold out-of-fold scores of the training ham, target FPR 1 %).
# With --eval, also train on the time split's training part only
# (easy-ham-1, hard-ham-1, spam-1) -> target/onnx/model-time.onnx and measure
# it with `sift eval-onnx` (quality on easy-ham-2 + spam-2, speed), plus the
# shipped model's speed. Extra arguments go to train.py (e.g. --hidden 64).
# Honours CARGO_TARGET_DIR, SIFT_DATA_DIR, BITS, FEATURES.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
eval_too=0
if [[ "${1:-}" == "--eval" ]]; then eval_too=1; shift; fi
bits="${BITS:-14}"
data="${SIFT_DATA_DIR:-target/data}"
work="target/onnx"
# numpy's BLAS: one thread (the build machines are small and shared).
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

lib="$(filters/spam/onnx/setup-runtime.sh)"
export ORT_DYLIB_PATH="$lib"
py="${SIFT_VENV:-$root/target/venv}/bin/python"
filters/spam/fetch-data.sh
cargo build --profile quick --bin sift
sift="${CARGO_TARGET_DIR:-target}/quick/sift"

# Feature blocks: the native model's, but char 3-, 4- and 5-grams (the MLP
# was chosen on them); `unicode` undoes invisible characters, fullwidth and
# look-alike letters first, as the native model does.
features="${FEATURES:-word,bigram,char,signal,fold,unicode}"
"$sift" export-features spam --data-dir "$data" --bits "$bits" --features "$features" \
    --out "$work/features"
"$py" filters/spam/onnx/train.py --features "$work/features" --out filters/spam/model.onnx "$@"
"$sift" classify --filter spam --model filters/spam/model.onnx --runtime "$lib" \
    "$data/spam-assassin/spam-2/$(ls "$data/spam-assassin/spam-2" | head -1)"

if [[ $eval_too == 1 ]]; then
    "$py" filters/spam/onnx/train.py --features "$work/features" --out "$work/model-time.onnx" \
        --groups easy-ham-1,hard-ham-1,spam-1 --report easy-ham-2,spam-2 "$@"
    "$sift" eval-onnx --model "$work/model-time.onnx" --data-dir "$data"
    "$sift" eval-onnx --model filters/spam/model.onnx --data-dir "$data" --bench-only
fi
