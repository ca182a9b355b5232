#!/usr/bin/env python3
"""Loads fibd's /dashboard in headless Chromium for real seconds (not virtual
time: the page's rates need fibd's counters to move between polls), then
prints what the page drew as JSON and optionally saves a screenshot.

    scripts/dashboard-check.py URL [--seconds N] [--screenshot out.png]
        [--until JS] [--eval JS]

--until waits until the page's expression JS is true (--seconds is then only
the bound: exit 1 with the page's state if it never holds); --eval adds
{"eval": value of JS} to the output, evaluated in the page (its functions,
such as niceAxis and legendValue, included).

Chromium is driven over --remote-debugging-pipe (the DevTools protocol on
fds 3 and 4, messages ended by NUL), so nothing but the standard library and
the Debian `chromium` package is needed. Output: {"polls": N, "errors": N,
"watching": "v0.1.0 · public 127.0.0.1:8080 · lmdb /var/lib/fibd", "panels":
{"latency": {"state": "data", "points": 12, "legend": "...", "ticks": "0 ms | 0.05 ms | ..."}, ...}}.
"""

import argparse
import base64
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time

PAGE_STATE = """(() => ({
  polls: +document.body.dataset.polls,
  errors: +document.body.dataset.errors,
  lastError: document.body.dataset.lastError || null,
  status: document.getElementById("status").textContent,
  watching: document.getElementById("watching").textContent,
  title: document.title,
  panels: Object.fromEntries([...document.querySelectorAll("[data-panel]")].map(p => [
    p.dataset.panel,
    {state: p.dataset.state, points: +p.dataset.points,
     legend: p.querySelector(".legend").textContent, ticks: p.dataset.ticks || ""}])),
}))()"""


class Browser:
    def __init__(self, width, height):
        self.profile = tempfile.TemporaryDirectory(prefix="fibd-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        args = [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--window-size={width},{height}",
            f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe", "about:blank",
        ]

        def wire_fds():
            # Out of the way first, so neither lands on the other's target.
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        # 3 and 4 are kept: subprocess closes other fds after preexec_fn.
        self.proc = subprocess.Popen(
            args, pass_fds=(3, 4), preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise TimeoutError(method)

    def read_message(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.profile.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--until")
    parser.add_argument("--eval")
    args = parser.parse_args()
    browser = Browser(args.width, args.height)
    try:
        target = browser.call("Target.createTarget", {"url": args.url})["targetId"]
        session = browser.call("Target.attachToTarget", {
            "targetId": target, "flatten": True})["sessionId"]
        browser.call("Emulation.setDeviceMetricsOverride", {
            "width": args.width, "height": args.height, "deviceScaleFactor": 1,
            "mobile": False}, session)
        # The protocol's events keep arriving; reading them keeps the pipe drained.
        end = time.monotonic() + args.seconds
        held = False
        while time.monotonic() < end:
            probe = f"!!({args.until})" if args.until else "false"
            reply = browser.call("Runtime.evaluate", {
                "expression": probe, "returnByValue": True}, session)["result"]
            if reply.get("value") is True:
                held = True
                break
            time.sleep(0.25)
        state = browser.call("Runtime.evaluate", {
            "expression": PAGE_STATE, "returnByValue": True}, session)["result"]["value"]
        if args.eval:
            reply = browser.call("Runtime.evaluate", {
                "expression": args.eval, "returnByValue": True}, session)
            if "exceptionDetails" in reply:
                raise RuntimeError(f"--eval: {reply['exceptionDetails']}")
            state["eval"] = reply["result"].get("value")
        if args.screenshot:
            shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        json.dump(state, sys.stdout, indent=1)
        print()
        if args.until and not held:
            print(f"--until never held in {args.seconds} s: {args.until}", file=sys.stderr)
            sys.exit(1)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
