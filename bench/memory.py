#!/usr/bin/env python3
"""Peak memory of fibd under hostile loads: starts the release binary, runs
one scenario at a time against a fresh data directory, and reads VmHWM from
/proc/PID/status. Loopback only, bounded in count and time.

    bench/memory.py                 # all scenarios
    bench/memory.py idle slow       # some of them

Scenarios:
  idle      10,000 idle keep-alive connections (each sent one request)
  slow      1,000 slow readers of one large value (F(10^6), 209 KB)
  distinct  a flood of distinct uncached large n (F(1.0e6 + i), 400 requests)
  clients   200,000 requests from distinct client addresses (forwarded by a
            trusted proxy: invented X-API-Key values no longer make buckets)
  pipeline  1,000 connections pipelining requests without ever reading
"""
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "fibd")
TARGET_KIB = 64 * 1024


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class Fibd:
    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="fibd-mem-")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", BINARY, "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", self.dir, *args],
            env={**os.environ, "RUST_LOG": "warn"},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000)),
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("fibd did not start")

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def get(self, path, headers=""):
        s = self.connect()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n{headers}\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        s.close()
        return data

    def peak(self):
        return vm_hwm_kib(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        subprocess.run(["rm", "-rf", self.dir])


def request(path, headers=""):
    return f"GET {path} HTTP/1.1\r\nHost: m\r\n{headers}\r\n".encode()


def scenario_idle(fibd):
    conns = []
    for i in range(9_999):  # the 10,000th (the cap) is the health probe
        s = fibd.connect()
        s.sendall(request("/current"))
        conns.append(s)
    for s in conns:
        s.recv(4096)
    alive = fibd.get("/healthz").startswith(b"HTTP/1.1 200")
    return f"9,999 idle keep-alive connections + 1 probe (the default cap, 10,000); still serving: {alive}", conns


def scenario_slow(fibd):
    fibd.get("/v1/fib?n=1000000")  # computed once, then shared
    conns = []
    for i in range(1000):
        s = fibd.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(request("/v1/fib?n=1000000", "Accept: text/plain\r\n"))
        conns.append(s)
    time.sleep(2)
    alive = fibd.get("/healthz").startswith(b"HTTP/1.1 200")
    return f"1,000 readers of F(10^6) (209 KB each, 209 MB in all) that never read; still serving: {alive}", conns


def scenario_distinct(fibd):
    conns = []
    codes = {}
    for i in range(400):
        s = fibd.connect()
        s.sendall(request(f"/v1/fib?n={1_000_000 + i}"))
        conns.append(s)
    deadline = time.time() + 60
    pending = list(conns)
    while pending and time.time() < deadline:
        ready, _, _ = select.select(pending, [], [], 1)
        for s in ready:
            head = s.recv(64)
            code = head[9:12].decode() if head else "closed"
            codes[code] = codes.get(code, 0) + 1
            pending.remove(s)
    summary = ", ".join(f"{n} x {c}" for c, n in sorted(codes.items()))
    return f"400 distinct n from 10^6 at once: {summary}; {len(pending)} still computing after 60 s", conns


def scenario_clients(fibd):
    """Distinct client addresses: the bucket table must stay at its bound."""
    s = fibd.connect()
    sent = 0
    s.setblocking(True)
    counts = {}
    for round_ in range(200):
        batch = b"".join(
            request("/current", f"X-Forwarded-For: 10.{round_}.{i >> 8}.{i & 255}\r\n")
            for i in range(1000)
        )
        s.sendall(batch)
        sent += 1000
        # read the answers of this round
        need = 1000
        buf = b""
        while need > 0:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("closed")
            buf += chunk
            need -= chunk.count(b"HTTP/1.1 ")
        for code in (b"200", b"429"):
            counts[code] = counts.get(code, 0) + buf.count(b"HTTP/1.1 " + code)
    summary = ", ".join(f"{n} x {c.decode()}" for c, n in sorted(counts.items()))
    metrics = fibd.get("/metrics").decode()
    kept = next(l.split()[1] for l in metrics.splitlines() if l.startswith("fibd_rate_limit_clients "))
    return f"{sent:,} requests, each from a new client address: {summary}; {kept} buckets kept", [s]


def scenario_pipeline(fibd):
    conns = []
    chunk = request("/current") * 1000
    total = 0
    for i in range(1000):
        s = fibd.connect()
        s.setblocking(False)
        conns.append(s)
    deadline = time.time() + 20
    while time.time() < deadline:
        progress = False
        for s in conns:
            try:
                total += s.send(chunk)
                progress = True
            except BlockingIOError:
                pass
        if not progress:
            break
    alive = fibd.get("/healthz").startswith(b"HTTP/1.1 200")
    return f"1,000 connections pipelined {total / 1e6:.1f} MB of requests and read nothing; still serving: {alive}", conns


SCENARIOS = {
    "idle": scenario_idle,
    "slow": scenario_slow,
    "distinct": scenario_distinct,
    "clients": scenario_clients,
    "pipeline": scenario_pipeline,
}


def main():
    if not os.path.exists(BINARY):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    names = sys.argv[1:] or list(SCENARIOS)
    print("| scenario | what happened | fibd VmHWM | target |")
    print("|---|---|---:|---:|")
    worst = 0
    for name in names:
        # The compute flood runs without rate limiting (which would refuse
        # most of it): it measures the queue's and the cache's own bounds.
        if name == "distinct":
            fibd = Fibd("--rate-limit", "0")
        elif name == "clients":
            # This script is the trusted proxy that names the clients.
            fibd = Fibd("--trusted-proxy", "127.0.0.1")
        else:
            fibd = Fibd()
        baseline = fibd.peak()
        try:
            what, keep = SCENARIOS[name](fibd)
            peak = fibd.peak()
            for s in keep:
                s.close()
        finally:
            fibd.stop()
        worst = max(worst, peak)
        ok = "ok" if peak <= TARGET_KIB else "OVER"
        print(f"| {name} | {what} | {peak / 1024:.1f} MiB (idle {baseline / 1024:.1f}) | 64 MiB {ok} |")
    sys.exit(0 if worst <= TARGET_KIB else 1)


if __name__ == "__main__":
    main()
