#!/usr/bin/env python3
"""Writes grafana-dashboard.json: one panel per ringrelay metric family, the latency
histograms as heatmaps, per-core views through the `core` variable. Run it after changing
the panels here; check-dashboard.sh shows that every expression returns data."""

import json
import pathlib

SEL = 'instance=~"$instance", core=~"$core"'
RATE = "$__rate_interval"

panels = []
position = {"x": 0, "y": 0}


def place(width, height):
    if position["x"] + width > 24:
        position["x"] = 0
        position["y"] += height
    grid = {"x": position["x"], "y": position["y"], "w": width, "h": height}
    position["x"] += width
    return grid


def row(title):
    position["x"] = 0
    if panels:
        position["y"] += 8
    panels.append({"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": position["y"], "w": 24, "h": 1}, "id": len(panels) + 1, "panels": []})
    position["y"] += 1


def timeseries(title, targets, unit="short", description="", width=8, stack=False):
    panels.append({
        "type": "timeseries",
        "id": len(panels) + 1,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": place(width, 8),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
    })


def heatmap(title, metric, description="", width=8):
    panels.append({
        "type": "heatmap",
        "id": len(panels) + 1,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": place(width, 8),
        "options": {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1, "color": {"scheme": "Oranges", "mode": "scheme"}},
        "targets": [{"refId": "A", "expr": f'sum by (le) (increase({metric}_bucket{{{SEL}}}[{RATE}]))', "format": "heatmap", "legendFormat": "{{le}}"}],
    })


def quantiles(metric, by=""):
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f'histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))', f"{legend}p{int(q * 100)}")
        for q in (0.5, 0.99)
    ]


row("Traffic")
timeseries("Connections", [(f'sum by (core) (ringrelay_connections{{{SEL}}})', "core {{core}}")], description="Open WebSocket connections per core.")
timeseries("Connections accepted and closed", [
    (f'sum(rate(ringrelay_connections_accepted_total{{{SEL}}}[{RATE}]))', "accepted"),
    (f'sum by (cause) (rate(ringrelay_connections_closed_total{{{SEL}}}[{RATE}]))', "closed: {{cause}}"),
], unit="cps")
timeseries("Client messages by verb", [(f'sum by (verb) (rate(ringrelay_client_messages_total{{{SEL}}}[{RATE}]))', "{{verb}}")], unit="reqps", stack=True)
timeseries("Events by outcome", [(f'sum by (outcome, reason) (rate(ringrelay_events_total{{{SEL}}}[{RATE}]))', "{{outcome}} {{reason}}")], unit="reqps", stack=True)
timeseries("Subscriptions", [(f'sum by (core) (ringrelay_subscriptions{{{SEL}}})', "core {{core}}")])
timeseries("Live deliveries", [(f'sum by (core) (rate(ringrelay_live_deliveries_total{{{SEL}}}[{RATE}]))', "core {{core}}")], unit="ops")
timeseries("Bytes in and out", [
    (f'sum(rate(ringrelay_received_bytes_total{{{SEL}}}[{RATE}]))', "received"),
    (f'sum(rate(ringrelay_sent_bytes_total{{{SEL}}}[{RATE}]))', "sent"),
], unit="Bps")
timeseries("Rate limited", [
    (f'sum by (what) (rate(ringrelay_rate_limited_total{{{SEL}}}[{RATE}]))', "{{what}}"),
    (f'sum(ringrelay_rate_limit_keys{{{SEL}}})', "keys tracked"),
], unit="short", description="Requests refused by the rate limits, and the addresses and pubkeys tracked.")
timeseries("AUTH", [(f'sum by (result) (rate(ringrelay_auth_total{{{SEL}}}[{RATE}]))', "{{result}}")], unit="reqps")
timeseries("Management API and write plugin", [
    (f'sum by (result) (rate(ringrelay_manage_calls_total{{{SEL}}}[{RATE}]))', "NIP-86 {{result}}"),
    (f'sum(rate(ringrelay_plugin_failures_total{{{SEL}}}[{RATE}]))', "plugin failures"),
    (f'sum(rate(ringrelay_plugin_starts_total{{{SEL}}}[{RATE}]))', "plugin starts"),
], unit="ops", description="NIP-86 calls by result; events the write plugin did not judge (given on_failure's decision) and its (re)starts.")
timeseries("Slow consumers closed", [(f'sum by (core) (rate(ringrelay_slow_consumer_closes_total{{{SEL}}}[{RATE}]))', "core {{core}}")], unit="cps")
timeseries("Queries", [
    (f'sum(rate(ringrelay_queries_cancelled_total{{{SEL}}}[{RATE}]))', "cancelled"),
    (f'sum(rate(ringrelay_counts_from_index_total{{{SEL}}}[{RATE}]))', "COUNT from index"),
    (f'sum(rate(ringrelay_counts_scanned_total{{{SEL}}}[{RATE}]))', "COUNT scanned"),
    (f'sum(rate(ringrelay_long_scans_total{{{SEL}}}[{RATE}]))', "long scans"),
], unit="ops")

row("Latency")
heatmap("EVENT → OK", "ringrelay_ingest_duration_seconds", "From an EVENT's arrival to its OK being queued (includes the group commit).")
heatmap("REQ → EOSE", "ringrelay_req_duration_seconds")
heatmap("fdatasync", "ringrelay_fsync_duration_seconds", "Each segment file's fdatasync in a group commit.")
timeseries("EVENT → OK quantiles", quantiles("ringrelay_ingest_duration_seconds"), unit="s")
timeseries("REQ → EOSE and COUNT quantiles", quantiles("ringrelay_req_duration_seconds") + [(e.replace("req_duration", "count_duration"), "COUNT " + l) for e, l in quantiles("ringrelay_req_duration_seconds")], unit="s")
timeseries("fdatasync quantiles per shard", quantiles("ringrelay_fsync_duration_seconds", "shard"), unit="s")

row("Storage")
timeseries("Events per group commit", [
    (f'sum(rate(ringrelay_commit_batch_events_sum{{{SEL}}}[{RATE}])) / sum(rate(ringrelay_commit_batch_events_count{{{SEL}}}[{RATE}]))', "mean"),
] + quantiles("ringrelay_commit_batch_events"))
timeseries("Shard size and dead bytes", [
    (f'sum by (shard) (ringrelay_shard_size_bytes{{{SEL}}})', "shard {{shard}}"),
    (f'sum by (shard) (ringrelay_shard_dead_bytes{{{SEL}}})', "dead {{shard}}"),
], unit="bytes")
timeseries("Segments and records", [
    (f'sum(ringrelay_shard_segments{{{SEL}}})', "segments"),
    (f'sum(ringrelay_shard_records{{{SEL}}})', "records"),
    (f'sum(ringrelay_shard_live_records{{{SEL}}})', "live records"),
])
timeseries("Index memory", [(f'sum by (shard) (ringrelay_index_memory_bytes{{{SEL}}})', "shard {{shard}}")], unit="bytes")
timeseries("Compaction and retention", [
    (f'sum by (shard) (rate(ringrelay_compaction_reclaimed_bytes_total{{{SEL}}}[{RATE}]))', "reclaimed {{shard}}"),
    (f'sum by (shard) (rate(ringrelay_compaction_written_bytes_total{{{SEL}}}[{RATE}]))', "written {{shard}}"),
], unit="Bps", description="Online compaction: bytes of segment files given back, and bytes written to do it.")
timeseries("Events retired", [
    (f'sum(rate(ringrelay_retention_retired_total{{{SEL}}}[{RATE}]))', "by age"),
    (f'sum(rate(ringrelay_retention_evicted_total{{{SEL}}}[{RATE}]))', "evicted for size"),
    (f'sum(increase(ringrelay_compaction_failures_total{{{SEL}}}[{RATE}]))', "compaction failures"),
])
timeseries("Write throughput", [(f'sum by (shard) (rate(ringrelay_commit_written_bytes_total{{{SEL}}}[{RATE}]))', "shard {{shard}}")], unit="Bps")
timeseries("Storage state", [
    (f'sum by (shard, cause) (ringrelay_shard_writes_refused{{{SEL}}})', "refusing {{shard}} {{cause}}"),
    (f'sum(increase(ringrelay_commit_failures_total{{{SEL}}}[{RATE}]))', "commit failures"),
], description="1 while a shard refuses new events, by cause.")
timeseries("Free space and reserve", [
    ('ringrelay_storage_free_bytes{instance=~"$instance"}', "free"),
    ('ringrelay_storage_reserve_bytes{instance=~"$instance"}', "reserve"),
], unit="bytes")

row("Budgets and cores")
timeseries("Budget use / limit", [(f'max by (core, budget) (ringrelay_budget_used{{{SEL}}} / ringrelay_budget_limit{{{SEL}}})', "core {{core}} {{budget}}")], unit="percentunit")
timeseries("Budget use", [(f'sum by (budget) (ringrelay_budget_used{{{SEL}}})', "{{budget}}")])
timeseries("Budget high-water marks", [(f'max by (budget) (ringrelay_budget_high_water{{{SEL}}})', "{{budget}}")])
timeseries("Core busy", [(f'rate(ringrelay_core_busy_seconds_total{{{SEL}}}[{RATE}])', "core {{core}}")], unit="percentunit", description="Share of each core its executor spent running tasks.")

row("Peers (a fleet, docs/fleet.md)")
timeseries("Peer links up", [(f'max by (peer) (ringrelay_peer_connected{{{SEL}}})', "{{peer}}")], description="1 while a peer's live connection is up.")
timeseries("Events from and to peers", [
    (f'sum by (peer) (rate(ringrelay_peer_events_received_total{{{SEL}}}[{RATE}]))', "from {{peer}}"),
    (f'sum by (peer) (rate(ringrelay_peer_events_sent_total{{{SEL}}}[{RATE}]))', "to {{peer}}"),
], unit="ops")
timeseries("Peer lag: what the last sync found missing", [
    (f'max by (peer) (ringrelay_peer_last_sync_missing{{{SEL}}})', "here, from {{peer}}"),
    (f'max by (peer) (ringrelay_peer_last_sync_extra{{{SEL}}})', "at {{peer}}"),
    (f'time() - max by (peer) (ringrelay_peer_last_sync_timestamp_seconds{{{SEL}}})', "seconds since {{peer}}'s last sync"),
], description="Events each side lacked at the last catch-up sync, and how long ago it ended well.")

row("Process")
timeseries("CPU", [('rate(process_cpu_seconds_total{instance=~"$instance", job=~"$job"}[$__rate_interval])', "cores used")])
timeseries("Memory", [
    ('process_resident_memory_bytes{instance=~"$instance", job=~"$job"}', "resident"),
], unit="bytes")
timeseries("Open files", [
    ('process_open_fds{instance=~"$instance", job=~"$job"}', "open"),
    ('process_max_fds{instance=~"$instance", job=~"$job"}', "limit"),
])
timeseries("Uptime", [('time() - process_start_time_seconds{instance=~"$instance", job=~"$job"}', "uptime")], unit="s")

dashboard = {
    "title": "ringrelay",
    "uid": "ringrelay",
    "tags": ["nostr", "ringrelay"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "job", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": "label_values(ringrelay_build_info, job)", "refresh": 2, "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}},
        {"name": "instance", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": 'label_values(ringrelay_build_info{job=~"$job"}, instance)', "refresh": 2, "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}},
        {"name": "core", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": 'label_values(ringrelay_connections{instance=~"$instance"}, core)', "refresh": 2, "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": panels,
}
path = pathlib.Path(__file__).with_name("grafana-dashboard.json")
path.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {path}: {sum(1 for p in panels if p['type'] != 'row')} panels")
