#!/usr/bin/env python3
"""Checks deploy/ without running it: compose.yaml parses as YAML and holds
together (every bind-mounted file exists, volumes are declared, ports stay on
loopback, Zipkin is optional, Prometheus scrapes the port fibd listens on),
and the Grafana dashboard and provisioning agree on the data source.
Images cannot be pulled where fibd is built, so the stack itself is not run.

    scripts/check-deploy.py [DEPLOY_DIR]       (needs python3-yaml)
"""

import json
import os
import sys

import yaml


def check(condition, message):
    if not condition:
        raise SystemExit(f"check-deploy: {message}")


def main():
    deploy = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "deploy")
    compose = yaml.safe_load(open(os.path.join(deploy, "compose.yaml")))
    services = compose["services"]
    check(set(services) == {"fibd", "prometheus", "grafana", "zipkin"}, f"services {sorted(services)}")
    check(services["zipkin"].get("profiles") == ["tracing"], "zipkin must be optional (profile tracing)")
    build = services["fibd"]["build"]
    check(os.path.isfile(os.path.join(deploy, build["context"], build["dockerfile"])), "fibd build file")
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        check("image" in service, f"{name} has no image")
        for port in service.get("ports", []):
            check(port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                check(os.path.exists(os.path.join(deploy, source)), f"{name} mounts missing {source}")
            else:
                check(source in declared, f"{name} uses undeclared volume {source}")
        for dep in service.get("depends_on", []):
            check(dep in services, f"{name} depends on unknown {dep}")
    listen_port = services["fibd"]["environment"]["FIBD_LISTEN"].rsplit(":", 1)[1]
    prom = yaml.safe_load(open(os.path.join(deploy, "prometheus", "prometheus.yml")))
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    check(targets == [f"fibd:{listen_port}"], f"Prometheus scrapes {targets}")
    check(prom["rule_files"] == ["alerts.yml"], "Prometheus loads alerts.yml")
    datasources = yaml.safe_load(open(os.path.join(deploy, "grafana", "provisioning", "datasources", "prometheus.yml")))
    source = datasources["datasources"][0]
    check(source["type"] == "prometheus" and source["url"] == "http://prometheus:9090", "Grafana data source")
    dashboard = json.load(open(os.path.join(deploy, "grafana", "fibd.json")))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    check(len(exprs) >= 20, f"only {len(exprs)} panel expressions")
    check(all(p.get("targets") for p in dashboard["panels"] if p["type"] != "row"), "a panel without a query")
    print(f"check-deploy: compose.yaml ({len(services)} services), prometheus.yml, "
          f"Grafana provisioning and dashboard ({len(exprs)} expressions) hold together")


if __name__ == "__main__":
    main()
