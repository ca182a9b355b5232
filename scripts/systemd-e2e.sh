#!/usr/bin/env bash
# End-to-end test of fibd under a real systemd: boots systemd as PID 1 in a
# podman container (runc runtime) over a debootstrap'd Debian bookworm root,
# installs the binary and systemd/fibd.{service,socket}, and checks socket
# activation, STATUS=, the journal, kill -9 with queued clients, the watchdog,
# a clean SIGTERM stop, scripts/crash-test.sh in systemd mode, /api/smart
# (refused under the stock unit, answered through README's drop-in, with a
# second fibd inside the container as the upstream), `systemctl reload` of the
# --api-keys file, fibd-admin.socket (the operator's endpoints on their own
# port), and journald's structured fields on an access line.
#
#   scripts/systemd-e2e.sh [--binary PATH] [--keep]
#
#   --binary PATH  use this fibd instead of building one. By default it builds
#                  `cargo build --release --features test-hooks` into
#                  $FIBD_E2E_CACHE/target-hooks (so target/release/fibd is
#                  never a wedge build).
#                  The watchdog check needs a test-hooks build; it is
#                  skipped for other binaries.
#   --keep         leave the container running afterwards (for debugging).
#
# The Debian root is cached in $FIBD_E2E_ROOT (default
# $FIBD_E2E_CACHE/root, $FIBD_E2E_CACHE defaulting to ~/.cache/fibd-e2e) and
# created on first use (about 3 minutes); the container runs on an overlay
# over it (--rootfs ROOT:O), so the cache stays clean. The build's target
# directory is cached beside it. Needs root, podman, runc and debootstrap:
# apt-get install -y podman runc debootstrap
# Takes a few minutes; not for CI. Prints PASS/FAIL/SKIP per check by name and
# exits 1 at the first failure.
set -Eeuo pipefail
# A command that fails outside a check says where, not only "rc 1".
trap 'printf "systemd-e2e: %s exited %s (line %s, called from line %s)\n" "$BASH_COMMAND" "$?" "$LINENO" "${BASH_LINENO[*]}" >&2' ERR

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FIBD_E2E_CACHE:-$HOME/.cache/fibd-e2e}
ROOT=${FIBD_E2E_ROOT:-$CACHE/root}
binary=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || { echo "--binary needs a path" >&2; exit 2; }; binary=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,30s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "systemd-e2e: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'systemd-e2e: %s\n' "$*"; }
die() { printf 'systemd-e2e: error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (podman --rootfs with systemd needs it)"
for tool in podman runc; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y podman runc debootstrap"
done

# --- the Debian root (cached) ---------------------------------------------------
# procps for /bin/kill, which fibd.service's ExecReload= runs: minbase leaves
# out that "important" package every regular Debian install has. A root
# missing any of these is made anew.
if [ ! -x "$ROOT/lib/systemd/systemd" ] || [ ! -x "$ROOT/usr/bin/curl" ] || [ ! -x "$ROOT/bin/kill" ]; then
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
    say "creating the Debian bookworm root in $ROOT (debootstrap, a few minutes)"
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,procps \
        bookworm "$ROOT.partial" >"${TMPDIR:-/tmp}/fibd-e2e-debootstrap.log" 2>&1 ||
        die "debootstrap failed; see ${TMPDIR:-/tmp}/fibd-e2e-debootstrap.log"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
fi

# --- the binary -------------------------------------------------------------------
if [ -z "$binary" ]; then
    features=()
    if grep -q '^test-hooks *=' "$REPO/Cargo.toml"; then
        features=(--features test-hooks)
    else
        say "Cargo.toml has no test-hooks feature yet; building without it"
    fi
    say "building: cargo build --release --locked ${features[*]} (target dir $CACHE/target-hooks)"
    (cd "$REPO" && CARGO_TARGET_DIR="$CACHE/target-hooks" cargo build --release --locked "${features[@]}")
    binary=$CACHE/target-hooks/release/fibd
fi
[ -x "$binary" ] || die "not an executable: $binary"
wedge=0
grep -aq 'wedging the event loop' "$binary" && wedge=1

# --- results ------------------------------------------------------------------------
passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); printf 'PASS  %-22s %s\n' "$1" "$2"; }
fail() { # the first failure ends the run: later checks assume the earlier ones
    failed=$((failed + 1))
    printf 'FAIL  %-22s %s\n' "$1" "$2"
    echo
    say "$passed passed, 1 failed ($1), $skipped skipped; stopped at the first failure"
    exit 1
}
skip() { skipped=$((skipped + 1)); printf 'SKIP  %-22s %s\n' "$1" "$2"; }
check() { # check NAME DETAIL CONDITION...
    local check_name=$1 detail=$2
    shift 2
    if "$@"; then pass "$check_name" "$detail"; else fail "$check_name" "$detail"; fi
}

# --- the container ------------------------------------------------------------------
container=fibd-e2e-$$
cleanup() {
    if [ "$keep" = 1 ]; then
        say "kept the container: podman exec -it $container bash ; podman rm -f $container"
    else
        podman rm -f -t 0 "$container" >/dev/null || say "could not remove container $container"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "booting systemd in container $container (runc, rootfs $ROOT:O)"
# --privileged: systemd as PID 1 of a host has every capability. Without it,
# only a unit's first process can set up its sandbox (inside the user
# namespace PrivateUsers= makes for it); a second one such as ExecReload=
# fails with status=226/NAMESPACE, and `systemctl reload` with it.
podman --runtime runc run -d --name "$container" --privileged \
    --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 \
    --systemd=always --rootfs "$ROOT:O" /lib/systemd/systemd >/dev/null

inside() { podman exec "$container" "$@"; }
sh_in() { podman exec "$container" sh -c "$1"; }
prop() { inside systemctl show -P "$1" fibd.service; }
URL=http://127.0.0.1:8080

state=""
for _ in $(seq 120); do
    state=$(inside timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
done
case "$state" in
    running|degraded) say "systemd is up ($state): $(inside systemctl --version | head -n1)" ;;
    *) die "systemd in the container did not come up (state '$state')" ;;
esac

# An index from the X-Fib-Index header of a request made inside the container;
# empty if there was no 200.
index_of() { # METHOD PATH
    sh_in "curl -s -X $1 -o /dev/null -D - --max-time 20 $URL$2" 2>/dev/null |
        awk 'toupper($0) ~ /^HTTP\// { s = $2 } tolower($0) ~ /^x-fib-index:/ && s == 200 { gsub(/\r/, ""); print $2 }' || true
}

# "2s", "200ms", "1min 30s" -> milliseconds.
to_ms() {
    local total=0 part
    for part in $1; do
        case "$part" in
            *ms) total=$((total + ${part%ms})) ;;
            *min) total=$((total + ${part%min} * 60000)) ;;
            *s) total=$((total + ${part%s} * 1000)) ;;
            *) total=$((total + part / 1000)) ;; # plain microseconds
        esac
    done
    echo "$total"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Waits until fibd.service runs with a main PID other than $1; prints it.
wait_new_main_pid() {
    local old=$1 pid
    for _ in $(seq 300); do
        pid=$(prop MainPID)
        if [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ "$(prop ActiveState)" = active ]; then
            echo "$pid"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# --- install ---------------------------------------------------------------------------
podman cp "$binary" "$container:/usr/local/bin/fibd"
inside chmod 0755 /usr/local/bin/fibd
podman cp "$REPO/systemd/fibd.service" "$container:/etc/systemd/system/fibd.service"
podman cp "$REPO/systemd/fibd.socket" "$container:/etc/systemd/system/fibd.socket"
podman cp "$REPO/systemd/fibd-admin.socket" "$container:/etc/systemd/system/fibd-admin.socket"
inside systemctl daemon-reload
say "installed $(inside /usr/local/bin/fibd --version) (test-hooks build: $([ $wedge = 1 ] && echo yes || echo no))"

# 1. The units load and verify cleanly under this systemd.
out=$(inside systemd-analyze verify /etc/systemd/system/fibd.service /etc/systemd/system/fibd.socket \
    /etc/systemd/system/fibd-admin.socket 2>&1 || echo "exit status $?")
check units-verify "systemd-analyze verify: ${out:-clean}" test -z "$out"

# 2. Socket activation: nothing runs until the first connection.
inside systemctl enable --now --quiet fibd.socket
before=$(inside systemctl is-active fibd.service || true)
t0=$(now_ms)
first=$(index_of POST /next)
t1=$(now_ms)
after=$(inside systemctl is-active fibd.service || true)
check socket-activation "service '$before' before, first POST /next -> index '${first:-none}' in $((t1 - t0)) ms, service '$after' after" \
    test "$before" = inactive -a "$first" = 1 -a "$after" = active

# 3. STATUS= and systemctl status.
index_of POST /next >/dev/null
index_of POST /next >/dev/null
cur=$(index_of GET /current)
status_text=""
for _ in $(seq 200); do
    status_text=$(prop StatusText)
    [[ $status_text =~ index\ $cur($|[^0-9]) ]] && break
    sleep 0.05
done
status_out=$(inside systemctl status fibd.service --no-pager 2>&1 || true)
check status-text "StatusText='$status_text' (index $cur); $(grep -o 'Active: [a-z]* ([a-z]*)' <<<"$status_out" || echo 'no Active line')" \
    bash -c '[[ $1 =~ index\ $2($|[^0-9]) ]] && grep -q "Active: active (running)" <<<"$3" && grep -q "Status: \"" <<<"$3"' _ "$status_text" "$cur" "$status_out"

# 4. The sandbox is really applied to the running process.
pid=$(prop MainPID)
proc=$(inside cat "/proc/$pid/status")
uid=$(awk '/^Uid:/ { print $2 }' <<<"$proc")
seccomp=$(awk '/^Seccomp:/ { print $2 }' <<<"$proc")
nnp=$(awk '/^NoNewPrivs:/ { print $2 }' <<<"$proc")
capeff=$(awk '/^CapEff:/ { print $2 }' <<<"$proc")
netns_host=$(inside readlink /proc/1/ns/net)
netns_fibd=$(inside readlink "/proc/$pid/ns/net")
check sandbox "uid $uid, Seccomp $seccomp, NoNewPrivs $nnp, CapEff $capeff, own netns $([ "$netns_host" != "$netns_fibd" ] && echo yes || echo no)" \
    test "$uid" != 0 -a "$seccomp" = 2 -a "$nnp" = 1 -a "$capeff" = 0000000000000000 -a "$netns_host" != "$netns_fibd"

# 5. The journal: nothing at warning or worse on a clean run.
warnings=$(inside journalctl -u fibd.service -p warning --no-pager -q -o cat 2>&1 || true)
check journal-clean "journalctl -u fibd -p warning: $([ -z "$warnings" ] && echo empty || tr '\n' '|' <<<"$warnings")" test -z "$warnings"

# 6. Log priorities: fibd's lines reach the journal with their level, prefix
# stripped. An info line from fibd.service, and an error from a transient run
# that cannot open its store.
info_json=$(inside journalctl -u fibd.service -t fibd -o json --no-pager -q 2>/dev/null | grep 'listening on' | head -n1 || true)
inside systemd-run --quiet --wait --collect --unit fibd-priority-probe -p User=nobody \
    /usr/local/bin/fibd --listen 127.0.0.1:0 --data-dir /proc/fibd-no-such-dir >/dev/null 2>&1 || true
err_lines=$(inside journalctl -u fibd-priority-probe -t fibd -p err..err -o cat --no-pager -q 2>/dev/null || true)
raw_prefixes=$(inside journalctl -t fibd -o cat --no-pager -q 2>/dev/null | grep -c '^<[0-7]>' || true)
info_priority=$(grep -o '"PRIORITY":"[0-9]"' <<<"$info_json" || true)
check log-priorities "start line ${info_priority:-not found}; store error at err: '$(head -n1 <<<"$err_lines")'; raw <N> prefixes in journal: $raw_prefixes" \
    test "$info_priority" = '"PRIORITY":"6"' -a -n "$err_lines" -a "$raw_prefixes" = 0

# 7. SIGTERM (systemctl stop) exits cleanly and keeps the index.
index_of POST /next >/dev/null
index_of POST /next >/dev/null
before=$(index_of GET /current)
inside systemctl stop fibd.service 2>/dev/null
result=$(prop Result)
code=$(prop ExecMainStatus)
stopped=$(inside systemctl is-active fibd.service || true)
sock=$(inside systemctl is-active fibd.socket || true)
after=$(index_of GET /current)
check sigterm-stop "index $before before stop; Result=$result exit=$code service=$stopped socket=$sock; index ${after:-none} after re-activation" \
    test "$result" = success -a "$code" = 0 -a "$stopped" = inactive -a "$sock" = active -a "$after" = "$before"

# 8. kill -9 while 5 clients wait in the socket's backlog: SIGSTOP the main
# process so the connections queue, start 5 POST /next, then SIGKILL it. The
# next fibd must answer all five; none may be refused or reset.
index_of GET /current >/dev/null
pid=$(prop MainPID)
restarts=$(prop NRestarts)
before=$(index_of GET /current)
inside rm -f /tmp/queued.1 /tmp/queued.2 /tmp/queued.3 /tmp/queued.4 /tmp/queued.5
sh_in "kill -STOP $pid"
sh_in "for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code}' -X POST --max-time 20 $URL/next >/tmp/queued.\$i & done; wait" &
queued=$!
# Until all five wait in the accept queue: a listening socket's rx_queue in
# /proc/net/tcp is its accept backlog (127.0.0.1:8080 is 0100007F:1F90 and
# LISTEN is 0A; the queue is hex).
backlog=0
for _ in $(seq 400); do
    hex=$(inside awk '$2 == "0100007F:1F90" && $4 == "0A" { split($5, q, ":"); print q[2] }' /proc/net/tcp 2>/dev/null || true)
    backlog=$((16#${hex:-0}))
    [ "$backlog" -ge 5 ] && break
    sleep 0.05
done
[ "$backlog" -ge 5 ] || fail kill9-queued "the five clients never queued in the socket's backlog (rx_queue $backlog)"
t0=$(now_ms)
sh_in "kill -KILL $pid"
new_pid=$(wait_new_main_pid "$pid" || echo none)
t1=$(now_ms)
wait "$queued" || true
codes=$(sh_in 'for i in 1 2 3 4 5; do printf "%s " "$(cat /tmp/queued.$i 2>/dev/null)"; done' || true)
codes=${codes% }
after=$(index_of GET /current)
check kill9-queued "5 POST /next queued ($backlog in the accept backlog) -> [$codes]; new MainPID $new_pid after $((t1 - t0)) ms; NRestarts $restarts -> $(prop NRestarts); index $before -> ${after:-none}" \
    test "$codes" = "200 200 200 200 200" -a "$new_pid" != none -a "${after:-0}" = $((before + 5))

# 9. The watchdog: SIGUSR1 wedges the event loop (test-hooks builds only);
# systemd must kill it for the watchdog (its result 'watchdog', not a crash
# or an exit) and start a new fibd, with the index intact. The time it took is
# shown against WatchdogSec + RestartSec, not checked: the abort, its core
# dump and the new start add a machine-dependent delay.
if [ "$wedge" = 1 ]; then
    watchdog_ms=$(to_ms "$(prop WatchdogUSec)")
    restart_ms=$(to_ms "$(prop RestartUSec)")
    before=$(index_of GET /current)
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    since=$(inside date +%s)
    # Timed on the container's CLOCK_MONOTONIC (/proc/uptime, 10 ms steps)
    # against systemd's ExecMainStartTimestampMonotonic, so podman exec's own
    # latency is not counted.
    sent_ms=$(sh_in "read up _ </proc/uptime; kill -USR1 $pid; echo \$up" | awk '{ printf "%d", $1 * 1000 }')
    t0=$(now_ms)
    new_pid=$(wait_new_main_pid "$pid" || echo none)
    t1=$(now_ms)
    started_ms=$(($(prop ExecMainStartTimestampMonotonic) / 1000))
    after=$(index_of GET /current)
    watchdog_log=$(inside journalctl -u fibd.service --since "@$since" -o cat --no-pager -q || true)
    timeout_logged=$(grep -c 'Watchdog timeout' <<<"$watchdog_log" || true)
    result_logged=$(grep -c "Failed with result 'watchdog'" <<<"$watchdog_log" || true)
    limit=$((watchdog_ms + restart_ms))
    took=$((started_ms - sent_ms))
    check watchdog "USR1 -> new fibd started after $took ms (WatchdogSec+RestartSec = $limit ms; $((t1 - t0)) ms until it was active, seen from outside); 'Watchdog timeout' logged $timeout_logged x, result 'watchdog' $result_logged x; MainPID $pid -> $new_pid; NRestarts $restarts -> $(prop NRestarts); index $before -> ${after:-none}" \
        test "$new_pid" != none -a "$timeout_logged" -ge 1 -a "$result_logged" -ge 1 -a "$after" = "$before"
else
    skip watchdog "binary not built with --features test-hooks"
fi

# 10. scripts/crash-test.sh in systemd mode, inside the container.
podman cp "$REPO/scripts/crash-test.sh" "$container:/usr/local/bin/fibd-crash-test"
crash_out=$(inside timeout 180 /usr/local/bin/fibd-crash-test --rounds 3 --max-seconds 150 2>&1) && crash_rc=0 || crash_rc=$?
[ "$crash_rc" = 0 ] || sed 's/^/    /' <<<"$crash_out"
check crash-test "$(tail -n1 <<<"$crash_out")" test "$crash_rc" = 0

# --- drop-ins --------------------------------------------------------------------------
DROPINS=/etc/systemd/system/fibd.service.d
# Installs drop-in NAME with the text on stdin and restarts fibd.service with it.
with_dropin() { # NAME
    podman exec -i "$container" sh -c "mkdir -p $DROPINS && cat >$DROPINS/$1.conf"
    inside systemctl daemon-reload
    inside systemctl restart fibd.service
}
# Removes every drop-in: back to the shipped units.
stock_unit() {
    inside rm -rf "$DROPINS"
    inside systemctl daemon-reload
    inside systemctl restart fibd.service
}
# The status code of a request made inside the container; curl's own "000" if
# nothing answered.
status_of() { # METHOD PATH [CURL-ARGS...]
    local method=$1 path=$2
    shift 2
    inside curl -s -o /dev/null -w '%{http_code}' -X "$method" --max-time 20 "$@" "$URL$path" || true
}
# Waits inside the container until a curl request answers with the status
# code $1 (bounded: 400 tries, 50 ms apart); returns 1 if it never did.
wait_status() { # STATUS CURL-ARGS...
    local expected=$1
    shift
    inside sh -c 'expected=$1; shift
        for _ in $(seq 400); do
            [ "$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 "$@")" = "$expected" ] && exit 0
            sleep 0.05
        done
        exit 1' _ "$expected" "$@"
}

# 11. /api/smart. The upstream is a second fibd in a transient unit on the
# container's loopback, answering GET /current with its JSON. Under the stock
# unit fibd.service has its own network namespace and no AF_INET, so every
# attempt fails at once (503 upstream_unavailable); README's drop-in (taken
# from README itself, with the upstream's address put in) opens exactly that.
UPSTREAM=http://127.0.0.1:9000/current
inside systemd-run --quiet --unit fibd-upstream -p User=nobody -p StateDirectory=fibd-upstream \
    /usr/local/bin/fibd --listen 127.0.0.1:9000 >/dev/null
wait_status 200 "$UPSTREAM" ||
    fail smart-upstream "the upstream fibd on $UPSTREAM never answered: $(inside systemctl status fibd-upstream --no-pager 2>&1 | tail -n 5 | tr '\n' '|')"
# fibd's outbound client asks for JSON, so the upstream answers /current as
# {"index": ..., "value": ...} (text/plain to a client that does not).
upstream_body=$(inside curl -s --max-time 5 -H 'Accept: application/json' "$UPSTREAM")

with_dropin upstream <<<"$(printf '[Service]\nEnvironment=FIBD_UPSTREAM=%s\n' "$UPSTREAM")"
smart_stock=$(inside curl -s -w '\n%{http_code}' --max-time 20 "$URL/api/smart?timeout=2000" || true)
check smart-stock-unit "FIBD_UPSTREAM=$UPSTREAM under the shipped unit: $(tail -n1 <<<"$smart_stock") $(head -n1 <<<"$smart_stock" | cut -c1-160)" \
    bash -c '[[ $1 == 503 && $2 == *"\"error\": \"upstream_unavailable\""* ]]' _ "$(tail -n1 <<<"$smart_stock")" "$(head -n1 <<<"$smart_stock")"

readme_dropin=$(awk '/opens exactly that much, for example:/ { on = 1; next }
    on && /^    / { sub(/^    /, ""); print; seen = 1; next }
    on && seen { exit }' "$REPO/README.md")
[[ $readme_dropin == "[Service]"*"PrivateNetwork=no"* ]] ||
    fail smart-readme-dropin "README's /api/smart drop-in not found (after 'opens exactly that much, for example:')"
dropin=$(sed -e "s#http://10\.0\.0\.5:9000/api/data#$UPSTREAM#" -e 's#10\.0\.0\.5#127.0.0.1#' <<<"$readme_dropin")
with_dropin smart <<<"$dropin"
inside rm -f "$DROPINS/upstream.conf"
inside systemctl daemon-reload
inside systemctl restart fibd.service
smart_dropin=$(inside curl -s -w '\n%{http_code}' --max-time 20 "$URL/api/smart?timeout=2000" || true)
same_api=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["api"] == json.loads(sys.argv[2]))' \
    "$(head -n1 <<<"$smart_dropin")" "$upstream_body" 2>/dev/null || echo False)
check smart-readme-dropin "README's drop-in ($(tr '\n' ' ' <<<"$dropin")): $(tail -n1 <<<"$smart_dropin") $(head -n1 <<<"$smart_dropin" | cut -c1-160); api is the upstream's answer: $same_api" \
    test "$(tail -n1 <<<"$smart_dropin")" = 200 -a "$same_api" = True
stock_unit
inside systemctl stop fibd-upstream

# 12. systemctl reload: ExecReload sends SIGHUP, which rereads --api-keys. The
# keys file is world-readable here because DynamicUser= gives fibd no fixed
# owner to hand a 0600 file to.
key_old=e2e-old-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
key_new=e2e-new-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
write_keys() { # NAME KEY: replaces the keys file in one rename
    printf '%s %s\n' "$1" "$2" | podman exec -i "$container" sh -c \
        'mkdir -p /etc/fibd && cat >/etc/fibd/api-keys.new && chmod 0644 /etc/fibd/api-keys.new && mv /etc/fibd/api-keys.new /etc/fibd/api-keys'
}
write_keys e2e-old "$key_old"
with_dropin api-keys <<<"$(printf '[Service]\nExecStart=\nExecStart=/usr/local/bin/fibd --api-keys /etc/fibd/api-keys\n')"
old_before=$(status_of GET /current -H "X-API-Key: $key_old")
new_before=$(status_of GET /current -H "X-API-Key: $key_new")
pid=$(prop MainPID)
write_keys e2e-new "$key_new"
reload_out=$(inside systemctl reload fibd.service 2>&1) && reload_rc=0 || reload_rc=$?
wait_status 200 -H "X-API-Key: $key_new" "$URL/current" || true
new_after=$(status_of GET /current -H "X-API-Key: $key_new")
old_after=$(status_of GET /current -H "X-API-Key: $key_old")
pid_after=$(prop MainPID)
check reload-api-keys "before: old key $old_before, new key $new_before; systemctl reload -> exit $reload_rc${reload_out:+ ($reload_out)}; after: new key $new_after, old key $old_after; MainPID $pid -> $pid_after" \
    test "$old_before" = 200 -a "$new_before" = 401 -a "$reload_rc" = 0 -a "$new_after" = 200 -a "$old_after" = 401 -a "$pid_after" = "$pid"
stock_unit

# 13. The admin socket: enabled as README says, systemd passes it to
# fibd.service beside fibd.socket (named admin); the operator's endpoints move
# there, the probes answer on both; disabled again, all is back on one port.
ADMIN=http://127.0.0.1:9090
# As README says: systemd refuses to start a socket whose service runs.
inside systemctl stop fibd.service
inside systemctl enable --now --quiet fibd-admin.socket
inside systemctl start fibd.service
wait_status 200 "$ADMIN/metrics" || true
public_metrics=$(status_of GET /metrics)
public_health=$(status_of GET /healthz)
admin_metrics=$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$ADMIN/metrics" || true)
admin_health=$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$ADMIN/healthz" || true)
admin_api=$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$ADMIN/current" || true)
admin_info=$(inside curl -s --max-time 20 "$ADMIN/metrics" | grep -c '^fibd_listener_info{listener="admin",address="127.0.0.1:9090"} 1' || true)
inside systemctl disable --now --quiet fibd-admin.socket
inside systemctl restart fibd.service
wait_status 200 "$URL/metrics" || true
public_after=$(status_of GET /metrics)
check admin-socket "fibd-admin.socket on: public /metrics $public_metrics, /healthz $public_health; admin /metrics $admin_metrics (listener info $admin_info), /healthz $admin_health, /current $admin_api; off again: public /metrics $public_after" \
    test "$public_metrics" = 404 -a "$public_health" = 200 -a "$admin_metrics" = 200 -a "$admin_info" = 1 \
    -a "$admin_health" = 200 -a "$admin_api" = 404 -a "$public_after" = 200

# 14. journald's structured fields on an access line (fibd logs to the
# journal natively when its stderr is the journal stream).
check_journal_fields() {
    local request_id since status entries found
    request_id=e2e-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    with_dropin access-log <<<"$(printf '[Service]\nEnvironment=RUST_LOG=info,fibd::access=debug\n')"
    since=$(inside date +%s)
    status=$(status_of GET /current -H "X-Request-Id: $request_id")
    # The line reaches the journal after the reply: wait for it, bounded.
    for _ in $(seq 200); do
        entries=$(inside journalctl -u fibd.service --since "@$since" -o json --no-pager -q 2>/dev/null | grep -F "$request_id" || true)
        [ -n "$entries" ] && break
        sleep 0.05
    done
    found=$(python3 -c '
import json, sys
want = {"REQUEST_ID": sys.argv[1], "STATUS": sys.argv[2]}
best = "no journal entry mentions the request id"
for line in sys.stdin:
    e = json.loads(line)
    have = {k: e.get(k) for k in ("REQUEST_ID", "ROUTE", "STATUS", "CLIENT")}
    if all(have[k] == v for k, v in want.items()) and have["ROUTE"] and "127.0.0.1" in str(have["CLIENT"]):
        print("ok " + " ".join(f"{k}={v}" for k, v in have.items()))
        sys.exit()
    best = "fields " + " ".join(f"{k}={v}" for k, v in have.items()) + " on: " + str(e.get("MESSAGE"))[:120]
print(best)' "$request_id" "$status" <<<"$entries")
    check journald-fields "GET /current -> $status with X-Request-Id $request_id; journalctl -u fibd -o json: $found" \
        bash -c '[[ $1 == "ok "* ]]' _ "$found"
    stock_unit
}
check_journal_fields

echo
say "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
