#!/usr/bin/env bash
# End to end: a real Prometheus scrapes a real fibd under load, every Grafana
# panel expression and every alert's signal returns data through
# /api/v1/query, and FibdHigh5xxRatio (with FibdCommitFailures and
# FibdNotReady) fires once commits fail.
#
#   scripts/prometheus-e2e.sh          (about 40 to 80 s; needs prometheus, promtool,
#                                       wrk, curl, python3 with yaml)
#
# Commits are made to fail with the debug-build fault hook: while
# DATA_DIR/fail-commits exists every commit fails, as on a failing disk. So
# FIBD must be a debug build (the default, built here) or one with the
# test-hooks feature. Scrapes and rule evaluations run every second. In the
# copy of the rules Prometheus loads, the `for:` durations are shortened to
# 1s and the 5-minute windows to ALERT_WINDOW (10s): a 5-minute window still
# holds the whole load phase when commits begin to fail, and on a fast
# machine that phase's volume keeps the 5xx ratio under its threshold for
# longer than any fixed wait, while a window shorter than the wait holds
# only failing requests once it has passed, however fast the machine is. The
# failing steps are paced under the rate limit, so they are 503s, never 429s.
# The panel and signal checks read the repository's rules, unchanged;
# thresholds are the repository's in both.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for tool in prometheus promtool wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "prometheus-e2e: $tool is missing (scripts/test installs it)" >&2; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "prometheus-e2e: python3 yaml is missing (Debian python3-yaml)" >&2; exit 1; }
if [ -z "${FIBD:-}" ]; then
    cargo build --quiet
    FIBD="$ROOT/target/debug/fibd"
fi

WORK=$(mktemp -d /tmp/fibd-prom-e2e.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_http() { # url seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "prometheus-e2e: $1 did not answer within $2 s" >&2
    return 1
}

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yml

FIBD_PORT=$(free_port)
# fibd's own /current is the /api/smart upstream: a real JSON answer over
# loopback, so the hedging and per-host families have series.
"$FIBD" --listen "127.0.0.1:$FIBD_PORT" --data-dir "$WORK/data" --rate-limit 1500 --rate-limit-loopback \
    --upstream "http://127.0.0.1:$FIBD_PORT/current" >"$WORK/fibd.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$FIBD_PORT/healthz" 30

PROM_PORT=$(free_port)
ALERT_WINDOW=10s
sed -E -e 's/^( +for: ).*/\11s/' -e "s/\\[5m\\]/[$ALERT_WINDOW]/g" deploy/prometheus/alerts.yml >"$WORK/alerts.yml"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: fibd
    static_configs:
      - targets: ["127.0.0.1:$FIBD_PORT"]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
PROM="http://127.0.0.1:$PROM_PORT"
wait_http "$PROM/-/ready" 30

echo "== load: every kind of request for 15 s (wrk, bench/wrk/mixed.lua; a 1,500 req/s limit so some get 429)"
timeout 30 wrk -t1 -c10 -d15s -s bench/wrk/mixed.lua "http://127.0.0.1:$FIBD_PORT" >"$WORK/wrk-mixed.log" 2>&1
grep -E "Requests/sec|Non-2xx" "$WORK/wrk-mixed.log" || true
echo "== /api/smart: 50 calls"
for _ in $(seq 1 50); do
    curl -sS -o /dev/null "http://127.0.0.1:$FIBD_PORT/api/smart?timeout=500"
done

echo "== every panel expression and alert signal, through $PROM/api/v1/query"
python3 scripts/promql-check.py exprs "$PROM" "http://127.0.0.1:$FIBD_PORT/metrics" \
    deploy/grafana/fibd.json deploy/prometheus/alerts.yml

# The 5xx ratio is taken over ALERT_WINDOW in the loaded copy: once that
# window lies wholly after the load phase it holds failing steps (and the
# scrapes) only. The failing steps are paced to at most 100 per second, far
# under the 1,500 req/s limit, so none of them is a 429 that would dilute the
# ratio: an unpaced client on a fast machine sends so many that the 429s
# outnumber the 503s twenty to one. However slow the machine, every step that
# is answered is a 503, so the ratio passes 5 % whatever rate it reaches.
echo "== commits fail (fault hook): paced steps for up to 45 s until the alerts fire"
touch "$WORK/data/fail-commits"
timeout 60 python3 - "$FIBD_PORT" >"$WORK/steps.log" 2>&1 <<'PY' &
import http.client, sys, time
port, paths, sent, end = int(sys.argv[1]), ("/next", "/previous"), 0, time.monotonic() + 45
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
while time.monotonic() < end:
    try:
        conn.request("POST", paths[sent % 2], body=b"")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        conn.close()
    sent += 1
    time.sleep(0.01)
print(f"{sent} steps sent")
PY
PIDS+=($!)
status=0
for alert in FibdHigh5xxRatio FibdCommitFailures FibdNotReady; do
    python3 scripts/promql-check.py alert "$PROM" "$alert" 40 || status=1
done
curl -sS "http://127.0.0.1:$FIBD_PORT/readyz" -o /dev/null -w "/readyz while failing: %{http_code}\n"
rm -f "$WORK/data/fail-commits"
if [ "$status" != 0 ]; then
    echo "prometheus-e2e: FAILED; fibd log tail:" >&2
    tail -5 "$WORK/fibd.log" >&2
    exit 1
fi
echo "prometheus-e2e: OK"
