#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/cdcsync.json, the cdcsync Grafana dashboard.

The dashboard is written as this short description rather than edited as 1500 lines of JSON,
so that a reviewer sees every query in one place. Run it after a change:

    python3 deploy/grafana/dashboard.py > deploy/grafana/dashboards/cdcsync.json

scripts/ops-test fails when the committed JSON differs from this script's output, and checks
every query: valid PromQL (promtool), and only metric names listed in docs/metrics.md.
Changes made in Grafana's editor must be carried back here (export, then port the queries).
"""

import json

DS = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's rate interval: at least 4 scrape intervals, so rate() always has two samples.
RI = "$__rate_interval"
SEL_R = 'job=~"$reader_job"'
SEL_A = 'job=~"$applier_job"'

panels = []
_next_id = [1]
_y = [0]


def _id():
    i = _next_id[0]
    _next_id[0] += 1
    return i


def row(title):
    panels.append({"type": "row", "id": _id(), "title": title, "collapsed": False,
                   "gridPos": {"x": 0, "y": _y[0], "w": 24, "h": 1}, "panels": []})
    _y[0] += 1


def line(panels_in_row, height=8):
    """Lays out the given panels side by side on one line of the grid (24 columns)."""
    width = 24 // len(panels_in_row)
    for i, p in enumerate(panels_in_row):
        p["gridPos"] = {"x": i * width, "y": _y[0], "w": width, "h": height}
        p["id"] = _id()
        panels.append(p)
    _y[0] += height


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref,
            "range": True, "instant": False}


def ts(title, description, unit, *queries, stack=False, min0=True):
    """A time series panel; queries are (expr, legend) pairs."""
    custom = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
        custom["fillOpacity"] = 40
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(queries)],
    }


def stat(title, description, unit, expr, legend="", thresholds=None):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute",
                                                                   "steps": steps}},
                        "overrides": []},
        "options": {"colorMode": "background", "graphMode": "area", "textMode": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                      "values": False}},
        "targets": [target(expr, legend, "A")],
    }


def table(title, description, unit, expr, legend=""):
    t = target(expr, legend, "A")
    t.update({"instant": True, "range": False, "format": "table"})
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "__name__": True}}}],
        "targets": [t],
    }


def quantiles(metric, sel, by=""):
    by_le = f"{by}, le" if by else "le"
    return [(f"histogram_quantile({q}, sum by ({by_le}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
             f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""))
            for q in (0.5, 0.95, 0.99)]


# ---------------------------------------------------------------- overview
row("Overview")
line([
    stat("Backlog", "Unapplied messages in Kafka, all appliers (alert: CdcsyncBacklogHigh "
         "above 10000 for 2m).", "short",
         f"sum(cdcsync_applier_backlog_messages{{{SEL_A}}})",
         thresholds=[(1000, "yellow"), (10000, "red")]),
    stat("End-to-end latency p99", "MySQL commit to PostgreSQL commit, 99th percentile over "
         "5 minutes (alert: CdcsyncEndToEndLatencyHigh above 60 s).", "s",
         "histogram_quantile(0.99, sum by (le) (rate(cdcsync_applier_end_to_end_latency_seconds"
         f"_bucket{{{SEL_A}}}[5m])))", thresholds=[(10, "yellow"), (60, "red")]),
    stat("Reader lag", "How far behind the source the reader is.", "s",
         f"max(cdcsync_reader_lag_seconds{{{SEL_R}}})", thresholds=[(30, "yellow"), (120, "red")]),
    stat("Dead letters in range", "Messages sent to the dead-letter topic in the dashboard's "
         "time range.", "short",
         f"sum(increase(cdcsync_applier_dead_letters_total{{{SEL_A}}}[$__range]))",
         thresholds=[(1, "red")]),
    stat("Processes up", "Scrape targets that answer: reader, appliers, reconciliation.", "short",
         'sum(up{job=~"$reader_job|$applier_job|$reconcile_job"})'),
    stat("Alerts firing", "cdcsync alerts firing now (Prometheus' ALERTS series).", "short",
         'count(ALERTS{service="cdcsync", alertstate="firing"}) or vector(0)',
         thresholds=[(1, "red")]),
], height=5)

# ---------------------------------------------------------------- throughput
row("Throughput")
line([
    ts("Events read by table and op", "Change events the reader produced and Kafka "
       "acknowledged, per second (op: c create, u update, d delete, r snapshot read).", "ops",
       (f"sum by (table, op) (rate(cdcsync_reader_events_total{{{SEL_R}}}[{RI}]))",
        "{{table}} {{op}}"), stack=True),
    ts("Rows applied by table and op", "Events whose effect was committed to PostgreSQL, per "
       "second.", "ops",
       (f"sum by (table, op) (rate(cdcsync_applier_rows_applied_total{{{SEL_A}}}[{RI}]))",
        "{{table}} {{op}}"), stack=True),
])
line([
    ts("Binlog read", "Binlog bytes received from the source.", "Bps",
       (f"sum(rate(cdcsync_reader_binlog_bytes_total{{{SEL_R}}}[{RI}]))", "binlog bytes/s")),
    ts("Source transactions read", "Transactions with at least one included row.", "ops",
       (f"sum(rate(cdcsync_reader_transactions_total{{{SEL_R}}}[{RI}]))", "transactions/s")),
    ts("Skipped by the applier", "Duplicates (already processed) and stale events (an equal "
       "or newer version was applied): normal after restarts and rebalances.", "ops",
       (f"sum by (table) (rate(cdcsync_applier_duplicates_skipped_total{{{SEL_A}}}[{RI}]))",
        "duplicate {{table}}"),
       (f"sum by (table) (rate(cdcsync_applier_stale_skipped_total{{{SEL_A}}}[{RI}]))",
        "stale {{table}}")),
])

# ---------------------------------------------------------------- backlog and latency
row("Backlog and latency")
line([
    ts("Backlog per partition", "Log end offset minus committed offset, per assigned "
       "partition.", "short",
       (f"sum by (topic, partition) (cdcsync_applier_consumer_lag_messages{{{SEL_A}}})",
        "{{topic}}/{{partition}}"), stack=True),
    ts("Backlog total and per applier", "Sum of the lag over the partitions each applier "
       "holds.", "short",
       (f"sum(cdcsync_applier_backlog_messages{{{SEL_A}}})", "total"),
       (f"sum by (instance) (cdcsync_applier_backlog_messages{{{SEL_A}}})", "{{instance}}")),
])
line([
    ts("End-to-end latency", "Warehouse commit time minus source commit time.", "s",
       *quantiles("cdcsync_applier_end_to_end_latency_seconds", SEL_A)),
    ts("Apply latency", "Warehouse commit time minus the time the message was consumed.", "s",
       *quantiles("cdcsync_applier_apply_latency_seconds", SEL_A)),
    ts("Reader lag", "Now minus the commit time of the last event read.", "s",
       (f"cdcsync_reader_lag_seconds{{{SEL_R}}}", "{{instance}}")),
])
line([
    ts("Batches", "Time to apply and commit one batch, and events per batch.", "s",
       (f"histogram_quantile(0.99, sum by (le) (rate(cdcsync_applier_batch_duration_seconds_bucket{{{SEL_A}}}[{RI}])))",
        "duration p99"),
       (f"sum(rate(cdcsync_applier_batch_duration_seconds_sum{{{SEL_A}}}[{RI}])) / "
        f"sum(rate(cdcsync_applier_batch_duration_seconds_count{{{SEL_A}}}[{RI}]))",
        "duration mean")),
    ts("Events per batch", "Mean events per applied batch (larger under backlog).", "short",
       (f"sum(rate(cdcsync_applier_batch_size_events_sum{{{SEL_A}}}[{RI}])) / "
        f"sum(rate(cdcsync_applier_batch_size_events_count{{{SEL_A}}}[{RI}]))", "mean")),
    ts("Checkpoint age", "Seconds since the reader saved its binlog checkpoint and since each "
       "applier committed offsets (alerts at 300 s while there is work).", "s",
       (f"time() - cdcsync_reader_checkpoint_timestamp_seconds{{{SEL_R}}}", "reader {{instance}}"),
       (f"time() - cdcsync_applier_last_commit_timestamp_seconds{{{SEL_A}}}",
        "applier {{instance}}")),
])
line([
    ts("Binlog position", "The reader's binlog file and the source's: apart for long means "
       "the reader is behind (see the offsets panel for the same file).", "short",
       (f"cdcsync_reader_binlog_file_number{{{SEL_R}}}", "reader file {{instance}}"),
       (f"cdcsync_source_binlog_file_number{{{SEL_R}}}", "source file {{instance}}")),
    ts("Binlog offsets", "Offsets in the current files.", "bytes",
       (f"cdcsync_reader_binlog_offset_bytes{{{SEL_R}}}", "reader {{instance}}"),
       (f"cdcsync_source_binlog_offset_bytes{{{SEL_R}}}", "source {{instance}}")),
    ts("Reader in flight", "Produced but not yet acknowledged by Kafka.", "short",
       (f"cdcsync_reader_inflight_transactions{{{SEL_R}}}", "transactions {{instance}}"),
       (f"cdcsync_reader_inflight_bytes{{{SEL_R}}} / 1048576", "MiB {{instance}}")),
])

# ---------------------------------------------------------------- errors
row("Errors and dead letters")
line([
    ts("Dead letters by topic", "Messages the applier could not apply, per second.", "ops",
       (f"sum by (topic) (rate(cdcsync_applier_dead_letters_total{{{SEL_A}}}[{RI}]))",
        "{{topic}}")),
    ts("Reader errors by kind", "transient ones are retried; any other kind stops the reader.",
       "ops",
       (f"sum by (kind) (rate(cdcsync_reader_errors_total{{{SEL_R}}}[{RI}]))", "{{kind}}"),
       (f"sum(rate(cdcsync_reader_produce_errors_total{{{SEL_R}}}[{RI}]))", "kafka produce")),
    ts("PostgreSQL errors by kind", "Errors from the warehouse seen by the appliers.", "ops",
       (f"sum by (kind) (rate(cdcsync_applier_postgres_errors_total{{{SEL_A}}}[{RI}]))",
        "{{kind}}")),
])

# ---------------------------------------------------------------- snapshots
row("Snapshots")
line([
    ts("Snapshot chunks remaining", "Estimated chunks left per table in running snapshots.",
       "short", (f"sum by (table) (cdcsync_snapshot_chunks_remaining{{{SEL_R}}})", "{{table}}")),
    ts("Snapshot rows", "Rows read and produced by snapshots, per second.", "ops",
       (f"sum by (table) (rate(cdcsync_snapshot_rows_total{{{SEL_R}}}[{RI}]))", "{{table}}")),
    ts("Snapshots running", "1 while a snapshot of the table runs.", "short",
       (f"max by (table) (cdcsync_snapshot_running{{{SEL_R}}})", "{{table}}")),
    ts("Snapshot failures", "Snapshots that failed (CdcsyncSnapshotFailed).", "short",
       (f"sum by (table) (increase(cdcsync_snapshot_failures_total{{{SEL_R}}}[{RI}]))",
        "{{table}}")),
])

# ---------------------------------------------------------------- reconciliation
row("Reconciliation")
line([
    table("Mismatches by table", "Rows missing, extra or different in PostgreSQL found by the "
          "last completed reconciliation (CdcsyncReconcileMismatch).", "short",
          "sum by (table, kind) (cdcsync_reconcile_mismatches)"),
    ts("Last successful run", "Seconds since each table's last completed reconciliation.", "s",
       ("time() - cdcsync_reconcile_last_success_timestamp_seconds", "{{table}}")),
    ts("Run duration and rows checked", "Duration of the last run, and rows compared per "
       "second.", "s",
       ("cdcsync_reconcile_duration_seconds", "duration {{table}}"),
       (f"sum by (table) (rate(cdcsync_reconcile_rows_checked_total[{RI}]))",
        "rows/s {{table}}")),
])

# ---------------------------------------------------------------- process
row("Processes")
line([
    ts("CPU", "CPU seconds per second used by each process (1 = one core).", "percentunit",
       (f'rate(process_cpu_seconds_total{{job=~"$reader_job|$applier_job|$reconcile_job"}}[{RI}])',
        "{{job}} {{instance}}")),
    ts("Resident memory", "RSS of each process.", "bytes",
       ('process_resident_memory_bytes{job=~"$reader_job|$applier_job|$reconcile_job"}',
        "{{job}} {{instance}}")),
    table("Versions", "cdcsync_build_info of every process.", "short",
          "cdcsync_build_info"),
])


def variable(name, label, job_default):
    return {
        "name": name, "label": label, "type": "custom", "query": job_default,
        "current": {"text": job_default, "value": job_default}, "hide": 0,
        "options": [{"text": job_default, "value": job_default, "selected": True}],
    }


dashboard = {
    "uid": "cdcsync-overview",
    "title": "cdcsync",
    "description": "MySQL/MariaDB binlog to Kafka to PostgreSQL: freshness, throughput, "
                   "errors, snapshots, reconciliation. Generated by deploy/grafana/dashboard.py.",
    "tags": ["cdcsync"],
    "timezone": "",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "links": [],
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {"text": "Prometheus", "value": "prometheus"},
         "hide": 0},
        variable("reader_job", "Reader job", "cdcsync-reader"),
        variable("applier_job", "Applier job", "cdcsync-applier"),
        variable("reconcile_job", "Reconciliation job", "cdcsync-reconcile"),
    ]},
    "panels": panels,
}

if __name__ == "__main__":
    print(json.dumps(dashboard, indent=2, sort_keys=True))
