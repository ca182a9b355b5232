#!/usr/bin/env bash
# Crash test: kill -9 fibd under load, again and again, and check that no
# acknowledged step is ever lost.
#
#   scripts/crash-test.sh [--url URL]     against an installed fibd (systemd):
#                                         kills with `systemctl kill -s KILL
#                                         fibd.service`; Restart=always and the
#                                         socket unit bring it back
#   scripts/crash-test.sh --local         starts target/release/fibd itself on
#                                         127.0.0.1 with a temp data dir, and
#                                         after each kill -9 restarts it 200 ms
#                                         later, as RestartSec= would
# Options:
#   --rounds N        kill/restart rounds (default 10)
#   --clients N       concurrent curl loops driving POST /next (default 4)
#   --min-ms/--max-ms a kill lands this many ms into a round (default 200..1500)
#   --binary PATH     the fibd for --local (default target/release/fibd)
#   --max-seconds S   give up (exit 2) after this long in all (default 300)
#
# Every client records each X-Fib-Index it was answered with (status 200).
# After each restart, once the clients are stopped, GET /current must be >=
# the highest index any client was ever told. Exit 0 if every round holds,
# 1 on a violation, 2 on a usage or environment problem. Only talks to
# 127.0.0.1 / localhost.
set -euo pipefail

url=http://127.0.0.1:8080
local_mode=0
rounds=10
clients=4
min_ms=200
max_ms=1500
max_seconds=300
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=$REPO/target/release/fibd

say() { printf 'crash-test: %s\n' "$*"; }
die() { printf 'crash-test: error: %s\n' "$*" >&2; exit 2; }
need_value() { [ "$1" -ge 2 ] || die "$2 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --url) need_value $# "$1"; url=$2; shift 2 ;;
        --local) local_mode=1; shift ;;
        --rounds) need_value $# "$1"; rounds=$2; shift 2 ;;
        --clients) need_value $# "$1"; clients=$2; shift 2 ;;
        --min-ms) need_value $# "$1"; min_ms=$2; shift 2 ;;
        --max-ms) need_value $# "$1"; max_ms=$2; shift 2 ;;
        --binary) need_value $# "$1"; binary=$2; shift 2 ;;
        --max-seconds) need_value $# "$1"; max_seconds=$2; shift 2 ;;
        -h|--help) sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for n in rounds clients min_ms max_ms max_seconds; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n/_/-} must be a whole number"
done
[ "$rounds" -ge 1 ] && [ "$rounds" -le 1000 ] || die "--rounds must be 1..1000"
[ "$clients" -ge 1 ] && [ "$clients" -le 64 ] || die "--clients must be 1..64"
[ "$min_ms" -le "$max_ms" ] || die "--min-ms must be <= --max-ms"
command -v curl >/dev/null || die "curl not found"

work=$(mktemp -d "${TMPDIR:-/tmp}/fibd-crash.XXXXXX")
fibd_pid=""
client_pids=()
cleanup() {
    touch "$work/stop" 2>/dev/null || true
    for p in "${client_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$fibd_pid" ]; then
        kill -TERM "$fibd_pid" 2>/dev/null || true
        wait "$fibd_pid" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

deadline=$((SECONDS + max_seconds))
check_deadline() {
    [ "$SECONDS" -lt "$deadline" ] || { say "FAIL: over the --max-seconds $max_seconds budget"; exit 2; }
}

# --- the daemon: start/kill/wait, local or systemd ---------------------------

start_local() {
    local listen=$1
    env -u FIBD_LISTEN -u FIBD_DATA_DIR -u STATE_DIRECTORY -u LISTEN_FDS -u LISTEN_PID \
        -u LISTEN_FDNAMES -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID RUST_LOG=info \
        "$binary" --listen "$listen" --data-dir "$work/data" >>"$work/fibd.log" 2>&1 &
    fibd_pid=$!
}

if [ "$local_mode" = 1 ]; then
    [ -x "$binary" ] || die "no binary at $binary (cargo build --release, or --binary PATH)"
    # Let the OS pick a free port the first time, then keep it for restarts
    # (std's listeners set SO_REUSEADDR, so the same port binds again at once).
    start_local 127.0.0.1:0
    port=""
    for _ in $(seq 300); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/fibd.log" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$fibd_pid" 2>/dev/null || { cat "$work/fibd.log" >&2; die "fibd exited at start-up"; }
        sleep 0.1
    done
    [ -n "$port" ] || die "fibd did not log 'listening on 127.0.0.1:PORT' within 30 s"
    url=http://127.0.0.1:$port
    say "local mode: $binary on $url, data in $work/data"
else
    host=${url#http://}; host=${host%%/*}; host=${host%:*}
    case "$host" in
        127.0.0.1|localhost) ;;
        *) die "only 127.0.0.1 or localhost URLs are allowed (got $url)" ;;
    esac
    command -v systemctl >/dev/null || die "systemctl not found (use --local without systemd)"
    systemctl cat fibd.service >/dev/null 2>&1 || die "fibd.service is not installed (scripts/install.sh)"
    say "systemd mode: $url, killing fibd.service with SIGKILL"
fi
url=${url%/}

kill_daemon() {
    if [ "$local_mode" = 1 ]; then
        kill -9 "$fibd_pid" 2>/dev/null || true
        wait "$fibd_pid" 2>/dev/null || true
        fibd_pid=""
        sleep 0.2 # RestartSec=200ms
        start_local "127.0.0.1:$port"
    else
        systemctl kill -s KILL fibd.service
    fi
}

main_pid() { systemctl show -P MainPID fibd.service; }

# Prints the X-Fib-Index of GET /current, or nothing if it does not answer 200.
current_index() {
    curl -s -o /dev/null -D - --max-time 5 "$url/current" 2>/dev/null |
        awk 'toupper($0) ~ /^HTTP\// { status = $2 }
             tolower($0) ~ /^x-fib-index:/ && status == 200 { gsub(/\r/, ""); print $2; exit }' || true
}

wait_up() {
    for _ in $(seq 300); do
        if [ -n "$(current_index)" ]; then return 0; fi
        if [ "$local_mode" = 1 ] && ! kill -0 "$fibd_pid" 2>/dev/null; then
            tail -n 20 "$work/fibd.log" >&2
            die "fibd exited instead of starting"
        fi
        sleep 0.1
    done
    say "FAIL: fibd did not answer GET /current within 30 s"
    exit 1
}

# --- the clients --------------------------------------------------------------

# One client: POST /next in batches of 20 on one keep-alive connection,
# appending every acknowledged index (a 200 with X-Fib-Index) to its file.
client_loop() {
    local out=$1 urls=()
    for _ in $(seq 20); do urls+=("$url/next"); done
    while [ ! -e "$work/stop" ]; do
        curl -s -X POST -o /dev/null -D - --max-time 10 "${urls[@]}" 2>/dev/null |
            awk 'toupper($0) ~ /^HTTP\// { status = $2 }
                 tolower($0) ~ /^x-fib-index:/ && status == 200 { gsub(/\r/, ""); print $2; fflush() }' \
            >>"$out" || true
    done
}

highest_acked() {
    cat "$work"/acks.* 2>/dev/null | sort -n | tail -n1 || true
}

# --- the rounds ---------------------------------------------------------------

wait_up
floor=$(current_index)
say "start: index $floor; $rounds rounds, $clients clients, kill after ${min_ms}..${max_ms} ms"
violations=0
old_pid=""
for round in $(seq "$rounds"); do
    check_deadline
    rm -f "$work/stop"
    client_pids=()
    for c in $(seq "$clients"); do
        client_loop "$work/acks.$round.$c" &
        client_pids+=($!)
    done
    delay_ms=$((min_ms + RANDOM % (max_ms - min_ms + 1)))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    before=$(highest_acked)
    [ "$local_mode" = 1 ] || old_pid=$(main_pid)
    kill_daemon
    if [ "$local_mode" = 0 ]; then
        # Back when systemd reports a new main process that answers.
        for _ in $(seq 300); do
            pid=$(main_pid)
            [ "$pid" != 0 ] && [ "$pid" != "$old_pid" ] && break
            sleep 0.1
        done
    fi
    wait_up
    # Let the clients run against the new process a moment, then stop them.
    sleep 0.3
    touch "$work/stop"
    for p in "${client_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    client_pids=()
    acked=$(highest_acked)
    acked=${acked:-0}
    current=$(current_index)
    acks_this_round=$(cat "$work"/acks."$round".* 2>/dev/null | wc -l || true)
    if [ -z "$current" ]; then
        say "round $round: FAIL: GET /current did not answer after the restart"
        violations=$((violations + 1))
    elif [ "$current" -lt "$acked" ]; then
        say "round $round: FAIL: current $current < highest acknowledged $acked (lost $((acked - current)) steps)"
        violations=$((violations + 1))
    else
        say "round $round: ok: killed after ${delay_ms} ms with ${before:-0} acked; $acks_this_round acks this round; current $current >= highest acked $acked"
    fi
done

total=$(cat "$work"/acks.* 2>/dev/null | wc -l || true)
if [ "$violations" -gt 0 ]; then
    say "FAIL: $violations of $rounds rounds lost acknowledged steps ($total acks in all)"
    exit 1
fi
say "PASS: $rounds kill -9 rounds, $total acknowledged steps, none lost (index $floor -> $(current_index))"
