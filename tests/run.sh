#!/usr/bin/env bash
# The one command that runs sift's tests on a fresh machine (README).
# It installs whatever the tests need, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# The core suite needs only the Rust toolchain: every upstream, client and
# sift process it uses is started by the tests themselves on 127.0.0.1:0.
# Later suites (classifiers, Redis, onnxruntime) add their installs here.

cargo test --all-targets "$@"
