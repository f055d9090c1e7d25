#!/usr/bin/env bash
# The test suite: unit tests, property tests and the CLI integration tests, including the
# real-data tests on Fashion-MNIST (Debian package dataset-fashion-mnist must be installed;
# .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --workspace "$@"
