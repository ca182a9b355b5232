#!/usr/bin/env python3
"""Checks fibd's Grafana dashboard and alert rules against a live Prometheus.

    promql-check.py exprs PROM_URL METRICS_URL deploy/grafana/fibd.json deploy/prometheus/alerts.yml
        Every panel expression, and every alert's signal (its expression without
        the final `OP THRESHOLD`), must return data through /api/v1/query.
        Expressions on metrics this fibd does not expose at all (a service not
        in this build: primes, smart) are listed as SKIP, not passed.
    promql-check.py alert PROM_URL NAME TIMEOUT_S
        Waits until alert NAME is firing; prints its labels and value.

Standard library plus PyYAML (Debian python3-yaml).
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

import yaml

# Grafana's interval variables, as a dashboard at a 1 s scrape would expand them.
GRAFANA_VARS = {"$__rate_interval": "10s", "$__interval": "2s", "${datasource}": ""}
THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$")
METRIC = re.compile(r"\b(fibd_[a-z0-9_]+?|process_start_time_seconds)(?:_bucket|_sum|_count)?\b")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def query(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    doc = get_json(url)
    if doc.get("status") != "success":
        raise RuntimeError(f"{expr}: {doc}")
    return doc["data"]["result"]


def exposed_families(metrics_url):
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def panel_exprs(dashboard):
    for panel in json.load(open(dashboard))["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            yield f"panel  {panel['title']} [{target['refId']}]", expr


def alert_signals(rules):
    for group in yaml.safe_load(open(rules))["groups"]:
        for rule in group["rules"]:
            signal, n = THRESHOLD.subn("", rule["expr"])
            if n != 1:
                raise SystemExit(f"alert {rule['alert']}: expression is not SIGNAL OP THRESHOLD")
            yield f"alert  {rule['alert']}", signal


def check_exprs(prom, metrics_url, dashboard, rules):
    exposed = exposed_families(metrics_url)
    failed = 0
    for name, expr in [*panel_exprs(dashboard), *alert_signals(rules)]:
        missing = sorted({m for m in METRIC.findall(expr) if m not in exposed})
        result = query(prom, expr)
        if result:
            sample = result[0]["value"][1]
            print(f"OK    {name}: {len(result)} series, e.g. {sample}    {expr}")
        elif missing:
            print(f"SKIP  {name}: this fibd does not expose {', '.join(missing)}    {expr}")
        else:
            failed += 1
            print(f"FAIL  {name}: no data    {expr}")
    return failed


def wait_alert(prom, name, timeout):
    deadline = time.monotonic() + timeout
    states = []
    while time.monotonic() < deadline:
        alerts = get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
        mine = [a for a in alerts if a["labels"].get("alertname") == name]
        states = [a["state"] for a in mine]
        firing = [a for a in mine if a["state"] == "firing"]
        if firing:
            a = firing[0]
            print(f"FIRING {name}: value {a['value']}, labels {a['labels']}, since {a['activeAt']}")
            return 0
        time.sleep(0.5)
    print(f"NOT FIRING {name} after {timeout}s (states seen: {states})")
    return 1


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "exprs" and len(sys.argv) == 6:
        sys.exit(1 if check_exprs(*sys.argv[2:]) else 0)
    if mode == "alert" and len(sys.argv) == 5:
        sys.exit(wait_alert(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
