#!/usr/bin/env bash
# Checks the runtime stage of the Containerfile without pulling any base
# image: builds the static binary here, builds an image from the
# Containerfile's `FROM scratch` stage with that binary copied in, runs it
# read-only with a named volume, and talks to it over 127.0.0.1.
#
#   scripts/container-e2e.sh [--binary PATH] [--keep]
#
#   --binary PATH  use this binary (must be static) instead of building
#                  `RUSTFLAGS='-C target-feature=+crt-static' cargo build
#                  --release --target x86_64-unknown-linux-gnu`
#   --keep         keep the image and volume afterwards
#
# The build's target directory is cached in $FIBD_E2E_CACHE/target (default
# ~/.cache/fibd-e2e), so a second run only relinks what changed.
# Needs root (or a working rootless podman) and podman with the runc runtime
# (crun does not work on these machines). The image is built with
# --format docker, because the OCI image format has no HEALTHCHECK.
# Prints PASS/FAIL per check and exits 1 if any failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FIBD_E2E_CACHE:-$HOME/.cache/fibd-e2e}
binary=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || { echo "--binary needs a path" >&2; exit 2; }; binary=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "container-e2e: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'container-e2e: %s\n' "$*"; }
die() { printf 'container-e2e: error: %s\n' "$*" >&2; exit 2; }
for tool in podman curl file python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

passed=0 failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %-18s %s\n' "$1" "$2"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %-18s %s\n' "$1" "$2"; }
check() { # check NAME DETAIL CONDITION...
    local name=$1 detail=$2
    shift 2
    if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}

podman_() { podman --runtime runc "$@"; }
tag=localhost/fibd-e2e:$$
name=fibd-e2e-$$
volume=fibd-e2e-$$
ctx=$(mktemp -d "${TMPDIR:-/tmp}/fibd-container-e2e.XXXXXX")
cleanup() {
    podman_ rm -f -t 0 "$name" >/dev/null 2>&1 || true
    [ "$failed" = 0 ] || [ ! -s "$ctx/podman.log" ] || { echo "podman said:"; sed 's/^/    /' "$ctx/podman.log"; }
    if [ "$keep" = 0 ]; then
        podman volume rm -f "$volume" >/dev/null 2>&1 || true
        podman rmi -f "$tag" >/dev/null 2>&1 || true
    else
        say "kept image $tag and volume $volume"
    fi
    rm -rf "$ctx"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. a static binary -------------------------------------------------------
if [ -z "$binary" ]; then
    say "building: RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu --locked (target dir $CACHE/target)"
    (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$CACHE/target" \
        cargo build --release --target x86_64-unknown-linux-gnu --locked)
    binary=$CACHE/target/x86_64-unknown-linux-gnu/release/fibd
fi
[ -x "$binary" ] || die "not an executable: $binary"
file_out=$(file -b "$binary")
ldd_out=$(ldd "$binary" 2>&1 || true)
check static-binary "file: ${file_out%%, BuildID*}; ldd: $ldd_out" \
    bash -c '[[ $1 == *"static"*"linked"* ]] && [[ $2 == *"not a dynamic executable"* || $2 == *"statically linked"* ]]' _ "$file_out" "$ldd_out"

# --- 2. the runtime stage, taken from the Containerfile ----------------------------
# Everything from `FROM scratch` on, with the build stage's outputs replaced
# by files in this context.
cp "$binary" "$ctx/fibd"
mkdir -p "$ctx/sbom"
cp "$REPO/sbom/fibd.cdx.json" "$ctx/sbom/"
revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
mkdir -p "$ctx/rootfs/var/lib/fibd"
chmod 0700 "$ctx/rootfs/var/lib/fibd"
sed -n '/^FROM scratch/,$p' "$REPO/Containerfile" |
    sed -e 's#^COPY --from=build \(--chown=[^ ]* \)\{0,1\}/fibd /fibd#COPY \1fibd /fibd#' \
        -e 's#^COPY --from=build \(--chown=[^ ]* \)\{0,1\}/rootfs/\([^ ]*\) #COPY \1rootfs/\2 #' \
        >"$ctx/Containerfile.runtime"
if grep -q -- '--from=build' "$ctx/Containerfile.runtime"; then
    die "the runtime stage copies something from the build stage this script does not know: $(grep -- '--from=build' "$ctx/Containerfile.runtime")"
fi
build_log=$(podman build --format docker --build-arg "REVISION=$revision" -t "$tag" -f "$ctx/Containerfile.runtime" "$ctx" 2>&1) && built=0 || built=$?
check image-build "podman build of the Containerfile's runtime stage: $( [ "$built" = 0 ] && echo ok || echo "failed ($built)")" test "$built" = 0
[ "$built" = 0 ] || { sed 's/^/    /' <<<"$build_log"; exit 1; }
config=$(podman image inspect "$tag" --format \
    'user={{.Config.User}} stop={{.Config.StopSignal}} volumes={{range $k, $v := .Config.Volumes}}{{$k}} {{end}}ports={{range $k, $v := .Config.ExposedPorts}}{{$k}} {{end}}health={{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}} entrypoint={{join .Config.Entrypoint " "}}')
size=$(podman image inspect "$tag" --format '{{.Size}}')
labels=$(podman image inspect "$tag" --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}
{{end}}')
label() { sed -n "s/^$1=//p" <<<"$labels"; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
check image-labels "title $(label org.opencontainers.image.title), version $(label org.opencontainers.image.version), licenses $(label org.opencontainers.image.licenses), revision $(label org.opencontainers.image.revision), SBOM $(label dev.fibd.sbom.path) ($(label dev.fibd.sbom.format))" \
    test "$(label org.opencontainers.image.title)" = fibd -a "$(label org.opencontainers.image.version)" = "$version" \
    -a "$(label org.opencontainers.image.licenses)" = MIT -a "$(label org.opencontainers.image.revision)" = "$revision" \
    -a -n "$(label org.opencontainers.image.description)" -a "$(label dev.fibd.sbom.path)" = /sbom/fibd.cdx.json \
    -a "$(label dev.fibd.sbom.format)" = "CycloneDX 1.5 JSON"
check image-config "$config; $((size / 1024)) KiB" \
    bash -c '[[ $1 == *"user=65532:65532"* && $1 == *"stop=SIGTERM"* && $1 == *"/var/lib/fibd"* && $1 == *"8080/tcp"* && $1 == *"healthcheck --listen 127.0.0.1:8080"* ]]' _ "$config"

# --- 3. run it: read-only root, a named volume, loopback port --------------------------
podman volume create "$volume" >/dev/null
# podman's default rlimits exceed what these hosts allow (runc fails with
# "error setting rlimit ... operation not permitted"), so they are set
# explicitly: open files as in fibd.service, capped by this shell's hard limit.
# The healthcheck timer needs a systemd on the host; the check runs it by hand.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ] && nofile=16384
nproc=1000
# podman's complaints about that timer go to $ctx/podman.log, shown on failure.
podman_log=$ctx/podman.log
run() {
    podman_ run -d --name "$name" --read-only --cap-drop=all --security-opt no-new-privileges \
        --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" --health-interval=disable \
        -v "$volume:/var/lib/fibd" -p 127.0.0.1::8080 "$tag" >/dev/null 2>>"$podman_log" ||
        { sed 's/^/    /' "$podman_log" >&2; die "podman run failed"; }
}
port=""
url=""
index_of() { # METHOD PATH: the X-Fib-Index of a 200, or nothing
    curl -s -X "$1" -o /dev/null -D - --max-time 10 "$url$2" 2>/dev/null |
        awk 'toupper($0) ~ /^HTTP\// { s = $2 } tolower($0) ~ /^x-fib-index:/ && s == 200 { gsub(/\r/, ""); print $2 }' || true
}
wait_up() {
    port=$(podman port "$name" 8080/tcp | head -n1)
    port=${port##*:}
    url=http://127.0.0.1:$port
    for _ in $(seq 600); do # a bound of a minute, not the time it takes
        [ -n "$(index_of GET /current)" ] && return 0
        sleep 0.1
    done
    podman logs "$name" 2>&1 | tail -n 20 | sed 's/^/    /'
    return 1
}
run
if wait_up; then up=yes; else up=no; fi
pid=$(podman inspect -f '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo '?')
check runs "read-only, --cap-drop=all, on $url, answering: $up, uid $uid" test "$up" = yes -a "$uid" = 65532
[ "$up" = yes ] || exit 1

# The image has no shell, so writes are tried from the host through the
# container's own mount namespace (/proc/PID/root): a read-only mount refuses
# even root, while the volume takes them.
root_write=$( (: >"/proc/$pid/root/e2e-probe") 2>&1 && echo "write succeeded" || true)
root_mount=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo")
volume_write=$( (: >"/proc/$pid/root/var/lib/fibd/e2e-probe" && rm "/proc/$pid/root/var/lib/fibd/e2e-probe" && echo ok) 2>&1 || true)
check read-only-root "write to /: ${root_write##*: }; / mounted ${root_mount%%,*}; write to the volume: $volume_write" \
    bash -c '[[ $1 == *"Read-only file system"* && $2 == ro* && $3 == ok ]]' _ "$root_write" "$root_mount" "$volume_write"

# The SBOM in the image is the committed one, byte for byte, and describes
# this lock file: every crate it lists is in Cargo.lock at that version.
image_sbom=$ctx/image-sbom.json
podman_ cp "$name:/sbom/fibd.cdx.json" "$image_sbom" 2>>"$podman_log" || : >"$image_sbom"
sbom_sum=$(sha256sum <"$image_sbom" | cut -c1-16)
repo_sum=$(sha256sum <"$REPO/sbom/fibd.cdx.json" | cut -c1-16)
sbom_vs_lock=$(python3 - "$image_sbom" "$REPO/Cargo.lock" <<'PY' 2>&1 || true
import json, sys, tomllib
sbom = json.load(open(sys.argv[1]))
lock = {(p["name"], p["version"]) for p in tomllib.load(open(sys.argv[2], "rb"))["package"]}
listed = [(c["name"], c["version"]) for c in sbom.get("components", [])]
missing = [f"{n} {v}" for n, v in listed if (n, v) not in lock]
top = sbom["metadata"]["component"]
print(f"{top['name']} {top['version']}, {len(listed)} crates, {len(missing)} not in Cargo.lock {missing[:3]}")
PY
)
check sbom "/sbom/fibd.cdx.json sha256 $sbom_sum (repo's $repo_sum); $sbom_vs_lock" \
    bash -c '[[ $1 == "$2" && $3 == "fibd $4, "* && $3 == *", 0 not in Cargo.lock"* && $3 != *" 0 crates"* ]]' _ "$sbom_sum" "$repo_sum" "$sbom_vs_lock" "$version"

healthz=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url/healthz" || true)
first=$(index_of GET /current)
a=$(index_of POST /next)
b=$(index_of POST /next)
c=$(index_of POST /next)
now=$(index_of GET /current)
check endpoints "GET /healthz -> $healthz; GET /current -> $first; POST /next x3 -> $a $b $c; GET /current -> $now" \
    test "$healthz" = 200 -a "$first" = 0 -a "$a" = 1 -a "$b" = 2 -a "$c" = 3 -a "$now" = 3

health=$(podman_ healthcheck run "$name" 2>&1) && health_rc=0 || health_rc=$?
check healthcheck "podman healthcheck run: exit $health_rc ${health:+($health)}" test "$health_rc" = 0

log_line=$(podman logs "$name" 2>&1 | grep -m1 'listening on' || true)
check logs "${log_line:-no 'listening on' line}" test -n "$log_line"

# --- 4. durability across SIGTERM and SIGKILL, in the volume ----------------------------
podman_ stop -t 20 "$name" >/dev/null 2>>"$podman_log"
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
podman_ rm "$name" >/dev/null 2>>"$podman_log"
run
wait_up || true
after_stop=$(index_of GET /current)
check sigterm-restart "podman stop -> exit $code; new container on the same volume: index ${after_stop:-none}" \
    test "$code" = 0 -a "$after_stop" = 3

for _ in 1 2 3 4 5; do index_of POST /next >/dev/null; done
before=$(index_of GET /current)
podman_ kill -s KILL "$name" >/dev/null 2>>"$podman_log"
podman_ rm -f "$name" >/dev/null 2>>"$podman_log"
run
wait_up || true
after_kill=$(index_of GET /current)
check sigkill-restart "index $before, podman kill -s KILL, new container: index ${after_kill:-none}" \
    test "$after_kill" = "$before" -a "$before" = 8

echo
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
