#!/usr/bin/env bash
# Runs the SDK's tests: installs what they need if it is missing (Debian's chromium for the
# browser tests; the npm packages of package-lock.json; `--install-only` stops there), checks that the committed build in
# dist/ is what src/ compiles to (the server serves that file at /sdk/baton.js), then runs every
# test under test/ with Node's test runner against the server binary named by BATON_EXE (default:
# the release build). `cargo test --release` runs this from tests/sdk.rs.
set -euo pipefail
cd "$(dirname "$0")"

# The browser tests drive Debian's Chromium (no browser download is possible here).
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium
fi
if [ "${1:-}" = "--install-only" ]; then
    [ -f node_modules/.package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error
    exit 0
fi

if ! command -v node >/dev/null 2>&1; then
    echo "the SDK's tests need Node.js 20 or later (node is not on PATH)" >&2
    exit 1
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi

built="$(mktemp -d)"
trap 'rm -rf "$built"' EXIT
npx tsc -p tsconfig.json --outDir "$built"
if ! diff -r dist "$built" >/dev/null; then
    echo "sdk/typescript/dist is not what src/ compiles to: run 'npm run build' in sdk/typescript and commit dist/" >&2
    diff -r dist "$built" | head -20 >&2
    exit 1
fi

node --test --test-concurrency=1 test/
