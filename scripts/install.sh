#!/usr/bin/env bash
# Installs fibd as a socket-activated systemd service, or removes it.
#
#   scripts/install.sh                  build (cargo build --release) and install
#                                       the binary from cargo's target directory
#                                       (CARGO_TARGET_DIR honoured, via cargo metadata)
#   scripts/install.sh --binary PATH    install a binary built elsewhere (no cargo
#                                       needed: root's PATH often has none)
#   scripts/install.sh --no-enable      install the files, leave the units disabled
#   scripts/install.sh --uninstall      stop, disable and remove (keeps the data)
#   scripts/install.sh --uninstall --purge   ... and delete /var/lib/private/fibd
#
# Idempotent: running it again replaces the binary and the units, reloads
# systemd and restarts fibd.service if it was running (the socket stays open,
# so clients queue rather than fail). Needs root and a running systemd.
set -euo pipefail

PREFIX_BIN=/usr/local/bin
UNIT_DIR=/etc/systemd/system
DOC_DIR=/usr/local/share/doc/fibd
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

binary=""
uninstall=0
purge=0
enable=1
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        --no-enable) enable=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge only goes with --uninstall"

[ "$(id -u)" = 0 ] || die "run as root (it writes $PREFIX_BIN and $UNIT_DIR)"
command -v systemctl >/dev/null || die "systemctl not found: this needs systemd"
if [ ! -d /run/systemd/system ]; then
    die "systemd is not running as the init system here (/run/systemd/system missing)"
fi

if [ "$uninstall" = 1 ]; then
    # Stopping the socket would stop the service too (it Requires= the socket);
    # both are named so the order does not matter.
    active=()
    for unit in fibd.socket fibd-admin.socket fibd.service; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then active+=("$unit"); fi
    done
    if [ ${#active[@]} -gt 0 ]; then
        say "stopping ${active[*]}"
        systemctl stop "${active[@]}"
    fi
    if [ -e "$UNIT_DIR/fibd.socket" ] || [ -e "$UNIT_DIR/fibd.service" ]; then
        say "disabling fibd.socket"
        systemctl disable --quiet fibd.socket fibd-admin.socket fibd.service 2>/dev/null || true
    fi
    for f in "$UNIT_DIR/fibd.service" "$UNIT_DIR/fibd.socket" "$UNIT_DIR/fibd-admin.socket" "$PREFIX_BIN/fibd" "$DOC_DIR/README.md"; do
        if [ -e "$f" ]; then
            say "removing $f"
            rm -f "$f"
        fi
    done
    rmdir "$DOC_DIR" 2>/dev/null || true
    systemctl daemon-reload
    systemctl reset-failed fibd.service fibd.socket fibd-admin.socket 2>/dev/null || true
    if [ "$purge" = 1 ]; then
        for d in /var/lib/private/fibd /var/lib/fibd; do
            if [ -e "$d" ] || [ -L "$d" ]; then
                say "deleting data $d"
                rm -rf "$d"
            fi
        done
    elif [ -e /var/lib/private/fibd ]; then
        say "kept the data in /var/lib/private/fibd (--purge deletes it)"
    fi
    say "uninstalled"
    exit 0
fi

if [ -z "$binary" ]; then
    command -v cargo >/dev/null || die "cargo is not on root's PATH; build as your user \
(cargo build --release) and pass --binary PATH, e.g. --binary target/release/fibd"
    say "building: cargo build --release --locked (in $REPO)"
    (cd "$REPO" && cargo build --release --locked)
    # Where cargo put it: CARGO_TARGET_DIR or build.target-dir may move it.
    target_dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$target_dir" ] || die "cargo metadata did not name a target directory"
    binary=$target_dir/release/fibd
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "not an executable file: $binary"
"$binary" --version >/dev/null || die "$binary --version failed; not a fibd binary?"

was_active=0
systemctl is-active --quiet fibd.service 2>/dev/null && was_active=1

# install(1) writes a new file and renames it, so a running fibd keeps its
# old inode and the next start picks up the new one.
say "installing $("$binary" --version) to $PREFIX_BIN/fibd"
install -D -m 0755 "$binary" "$PREFIX_BIN/fibd"
say "installing units to $UNIT_DIR"
install -D -m 0644 "$REPO/systemd/fibd.service" "$UNIT_DIR/fibd.service"
install -D -m 0644 "$REPO/systemd/fibd.socket" "$UNIT_DIR/fibd.socket"
# Installed, not enabled: the admin socket is the operator's choice (README).
install -D -m 0644 "$REPO/systemd/fibd-admin.socket" "$UNIT_DIR/fibd-admin.socket"
install -D -m 0644 "$REPO/README.md" "$DOC_DIR/README.md"
systemctl daemon-reload

if [ "$enable" = 1 ]; then
    say "enabling and starting fibd.socket"
    systemctl enable --now --quiet fibd.socket
    if [ "$was_active" = 1 ]; then
        say "restarting the running fibd.service onto the new binary"
        systemctl restart fibd.service
    fi
    listen=$(systemctl show -P Listen fibd.socket)
    say "done: fibd.socket listens on ${listen% (*}; the first connection starts fibd.service"
    say "try: curl -s -X POST http://127.0.0.1:8080/next ; journalctl -u fibd -f"
else
    say "done (not enabled): systemctl enable --now fibd.socket"
fi
