#!/usr/bin/env bash
# Create (or reuse) target/venv with the packages of requirements.txt and
# print the path of the libonnxruntime.so shipped in PyPI's onnxruntime wheel,
# for ORT_DYLIB_PATH or `sift classify --runtime`. Progress goes to stderr,
# only the path to stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
here="$root/filters/spam/onnx"
venv="${SIFT_VENV:-$root/target/venv}"
req="$here/requirements.txt"
stamp="$venv/.sift-requirements"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" >&2
fi
if [[ ! -f "$stamp" ]] || ! cmp -s "$req" "$stamp"; then
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$req" >&2
    cp "$req" "$stamp"
fi
lib="$("$venv/bin/python" - <<'PY'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(p for p in glob.glob(os.path.join(capi, "libonnxruntime.so*"))
              if not p.endswith(".py"))
print(libs[-1] if libs else "")
PY
)"
if [[ -z "$lib" || ! -f "$lib" ]]; then
    echo "setup-runtime.sh: no libonnxruntime.so in the onnxruntime wheel under $venv" >&2
    exit 1
fi
echo "$lib"
