#!/usr/bin/env bash
# What the observability tests need (tests/dashboard.rs, tests/deploy.rs):
# headless Chromium for the dashboard check, Prometheus and promtool for the
# rules and the end-to-end script, wrk for its load, python3 with PyYAML for
# the checkers. For scripts/test to source or run before
# `cargo test --locked -- --include-ignored`.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y --no-install-recommends "${need[@]}" \
        || { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; }
fi
