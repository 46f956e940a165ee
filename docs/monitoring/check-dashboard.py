#!/usr/bin/env python3
"""By hand: show that every PromQL expression of grafana-dashboard.json (and of the alert
rules) returns data from a real Prometheus that scraped a relay under loadgen.

    cargo build --release -p ringrelay -p loadgen
    apt-get install prometheus          # Debian's package; its service need not run
    python3 docs/monitoring/check-dashboard.py [--seconds 60]

It starts a relay, a Prometheus scraping it every second and a loadgen run (publish,
fan-out, queries, a COUNT flooder and stalled readers), then asks Prometheus for each
expression (with $instance, $core and $job as `.*` and $__rate_interval as 30s) and prints
one line per expression: ok (with the number of series) or EMPTY. Exit status 1 if any is
empty. Everything listens on 127.0.0.1 and stops by itself."""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RELAY_PORT, PROMETHEUS_PORT = 7871, 9371


def expressions():
    dashboard = json.loads((HERE / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query", "")
        match = re.fullmatch(r"label_values\((.*), *\w+\)", query)
        if match:
            yield f"variable {variable['name']}", match.group(1)
    rules = (HERE / "ringrelay-alerts.yml").read_text()
    # Each side of each comparison in an alert's expression: the series must exist (the
    # alert itself fires only when something is wrong).
    for name, expr in re.findall(r"- alert: (\w+)\n\s+expr: (?:>-\n)?((?:.|\n)*?)\n\s+(?:for|labels):", rules):
        for clause in " ".join(expr.split()).split(" and "):
            for side in re.split(r"\s(?:==|>|<)\s", clause):
                if not re.fullmatch(r"[\d.]+", side.strip()):
                    yield f"alert {name}", side.strip()


def substitute(expr):
    for variable in ("$instance", "$core", "$job"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", "30s")


def query(expr):
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    if answer["status"] != "success":
        raise RuntimeError(answer)
    return answer["data"]["result"]


def wait_for(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--relay", default=str(ROOT / "target/release/ringrelay"))
    parser.add_argument("--loadgen", default=str(ROOT / "target/release/loadgen"))
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ringrelay-dashboard-"))
    (work / "relay.toml").write_text("[limits]\nconnections_per_ip_max = 100000\n")
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: ringrelay\n    static_configs:\n      - targets: ['127.0.0.1:{RELAY_PORT}']\n"
    )
    processes = []
    try:
        processes.append(subprocess.Popen(
            [args.relay, "serve", "--config", work / "relay.toml", "--listen", f"127.0.0.1:{RELAY_PORT}", "--data-dir", work / "data"],
            stderr=open(work / "relay.log", "w")))
        wait_for(f"http://127.0.0.1:{RELAY_PORT}/healthz")
        processes.append(subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w")))
        wait_for(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready")
        load = subprocess.run(
            [args.loadgen, f"ws://127.0.0.1:{RELAY_PORT}", "--publish", "300", "--fanout", "50", "--fanout-rate", "50",
             "--query", "20", "--query-preload", "2000", "--count-flooders", "1", "--stalled-readers", "20",
             "-d", f"{args.seconds}s", "-w", "2s", "-q"],
            capture_output=True, text=True)
        print(load.stdout.strip().splitlines()[-1] if load.stdout.strip() else load.stderr[-500:])
        time.sleep(3)
        empty = 0
        for where, expr in expressions():
            result = query(substitute(expr))
            status = f"ok ({len(result)} series)" if result else "EMPTY"
            empty += not result
            print(f"{status:16} {where}: {expr}")
        total = sum(1 for _ in expressions())
        print(f"{total - empty} of {total} expressions returned data")
        return 1 if empty else 0
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
