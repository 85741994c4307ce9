#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite, including the
# real-runsc end-to-end tests, with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
KRAAL_SETUP_SKIP_INSTALL=1 KRAAL_SETUP_TEST_DEPS=1 ./scripts/setup.sh

# A one-shot build gains nothing from incremental caches, which are most of a debug target dir.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> free disk space: $(df -h --output=avail . | tail -1 | tr -d ' ') in $(pwd)"

echo "==> cargo fmt --check and clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings

echo "==> building the static guest agent"
cargo build --release -q -p kraal-guest --target x86_64-unknown-linux-musl

# The base image is cached between runs; it is rebuilt from scratch when the cache is empty.
export KRAAL_TEST_IMAGE_DIR="${KRAAL_TEST_IMAGE_DIR:-/var/tmp/kraal-test-images}"
echo "==> cargo nextest (images cached in $KRAAL_TEST_IMAGE_DIR)"
cargo nextest run --workspace --profile ci "$@"
