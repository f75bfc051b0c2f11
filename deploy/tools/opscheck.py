#!/usr/bin/env python3
"""Offline checks of the operations package (deploy/, docs/runbook.md), run by scripts/ops-test.

Each subcommand prints one line per finding and exits non-zero if anything is wrong:

    metrics               every metric name used by the alert rules, the PrometheusRule and the
                          dashboard is listed in docs/metrics.md
    alerts                every rule has the labels and annotations operators rely on, its runbook
                          section exists, and the alerts the issue asks for are all there
    rule-tests            mutation check of the promtool tests: for every alert, its firing cases
                          fail when the alert can never fire, and its silent cases fail when it
                          always fires (so no alert is tested only one way, or vacuously)
    dashboard             the committed JSON is what deploy/grafana/dashboard.py generates; layout,
                          datasources, PromQL validity (promtool) and the required panels
    prometheusrule [--write]
                          deploy/k8s/prometheusrule.yaml carries exactly alerts.yml's groups
    k8s                   Kubernetes manifests: schema validation of built-in kinds (the
                          kubernetes-validate package, when importable) and cross-reference checks
    compose               docker-compose.yml: services, images, mounts of the same rule and
                          dashboard files, references between services, paths that must exist
    dockerfile            multi-stage build, non-root runtime, the binary as entrypoint
    scrape URL...         every metric name used by alerts and dashboard appears in the union of
                          the /metrics pages at URL... (run against live binaries)
    used-metrics          print the names used by alerts and dashboard, one per line

Only PyYAML is needed (Debian's python3-yaml), plus kubernetes-validate for `k8s`.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
RULE_TESTS = os.path.join(ROOT, "deploy/prometheus/tests")
DASHBOARD = os.path.join(ROOT, "deploy/grafana/dashboards/cdcsync.json")
DASHBOARD_GEN = os.path.join(ROOT, "deploy/grafana/dashboard.py")
PROMRULE = os.path.join(ROOT, "deploy/k8s/prometheusrule.yaml")
METRICS_MD = os.path.join(ROOT, "docs/metrics.md")
RUNBOOK = os.path.join(ROOT, "docs/runbook.md")
K8S = os.path.join(ROOT, "deploy/k8s")
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
RUNBOOK_BASE = "https://cdcsync.example.com/docs/runbook.md#"

# Series Prometheus itself creates; allowed in queries without being in docs/metrics.md.
PROMETHEUS_BUILTIN = {"up", "ALERTS", "ALERTS_FOR_STATE"}

# The alerts issue 7 asks for (by meaning), mapped to the rules that implement them.
REQUIRED_ALERTS = {
    "backlog too high": ["CdcsyncBacklogHigh"],
    "end-to-end latency too high": ["CdcsyncEndToEndLatencyHigh"],
    "reader down": ["CdcsyncReaderDown"],
    "applier down": ["CdcsyncApplierDown"],
    "reader stalled": ["CdcsyncReaderStalled"],
    "dead letters": ["CdcsyncDeadLetters"],
    "reconciliation mismatch": ["CdcsyncReconcileMismatch"],
    "snapshot failed": ["CdcsyncSnapshotFailed"],
    "checkpoint not advancing": ["CdcsyncReaderCheckpointNotAdvancing",
                                 "CdcsyncApplierCheckpointNotAdvancing"],
}

failures = []


def ok(msg):
    print(f"  ok    {msg}")


def fail(msg):
    failures.append(msg)
    print(f"  FAIL  {msg}")


def finish(what):
    if failures:
        print(f"{what}: {len(failures)} problem(s)")
        sys.exit(1)
    print(f"{what}: ok")


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ------------------------------------------------------------------ PromQL names

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "offset", "bool", "inf", "nan", "atan2"}


def promql_metric_names(expr):
    """Returns the metric names an expression selects. A small lexer, not a parser: strings,
    label matchers, ranges and grouping label lists are removed first; then every identifier
    that is not a function call, a keyword or a number is a metric name."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9smhdwy]+", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if s[max(0, m.start() - 1)] in "0123456789.":
            continue  # the exponent or unit of a number, e.g. 1e3
        names.add(word)
    return names


def documented_metrics():
    """Metric names from docs/metrics.md tables: the backticked names in the first column."""
    names, hist = set(), set()
    with open(METRICS_MD) as f:
        for line in f:
            if not line.startswith("|") or line.startswith("|---"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 2:
                continue
            for n in re.findall(r"`([a-z_:][a-z0-9_:]*)`", cells[0]):
                names.add(n)
                if cells[1].startswith("histogram"):
                    hist.add(n)
    return names, hist


def base_name(name, hist):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in hist:
            return name[: -len(suffix)]
    return name


def alert_rules(doc=None):
    doc = doc if doc is not None else load_yaml(ALERTS)
    for g in doc["groups"]:
        for r in g["rules"]:
            yield g["name"], r


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def grafana_to_promql(expr):
    """Replaces Grafana's variables by values Prometheus accepts, for parsing and for metric
    names (the job variables become their defaults)."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            .replace("$__interval", "15s").replace("$reader_job", "cdcsync-reader")
            .replace("$applier_job", "cdcsync-applier"))


def used_metrics():
    """{metric name: [where it is used]} over alerts.yml, the PrometheusRule and the dashboard."""
    used = {}
    for _, r in alert_rules():
        if "alert" in r:
            for n in promql_metric_names(r["expr"]):
                used.setdefault(n, []).append("alert " + r["alert"])
    if os.path.exists(PROMRULE):
        for doc in load_yaml_all(PROMRULE):
            for _, r in alert_rules(doc.get("spec", {})):
                for n in promql_metric_names(r["expr"]):
                    used.setdefault(n, []).append("PrometheusRule " + r.get("alert", "?"))
    for title, expr in dashboard_exprs():
        for n in promql_metric_names(grafana_to_promql(expr)):
            used.setdefault(n, []).append("panel " + title)
    return used


def cmd_metrics(_args):
    print("metric names used by alerts, PrometheusRule and dashboard vs docs/metrics.md")
    documented, hist = documented_metrics()
    if len(documented) < 30:
        fail(f"parsed only {len(documented)} names from docs/metrics.md: table format changed?")
    used = used_metrics()
    if not used:
        fail("no metric names found in alerts and dashboard")
    for name in sorted(used):
        if name in PROMETHEUS_BUILTIN:
            continue
        if base_name(name, hist) in documented:
            ok(f"{name}")
        else:
            fail(f"{name} (used by {', '.join(sorted(set(used[name]))[:3])}) is not in docs/metrics.md")
    finish("metrics")


def cmd_used_metrics(_args):
    _, hist = documented_metrics()
    for name in sorted({base_name(n, hist) for n in used_metrics()} - PROMETHEUS_BUILTIN):
        print(name)


# ------------------------------------------------------------------ alerts


def runbook_anchors():
    anchors = set()
    with open(RUNBOOK) as f:
        for line in f:
            m = re.match(r"#{1,6}\s+(.*?)\s*$", line)
            if m:
                # GitHub's anchor rule: lower case, drop punctuation, spaces become dashes.
                a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                anchors.add(a)
    return anchors


def parse_duration(d):
    total = 0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d)", str(d)):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def cmd_alerts(_args):
    print("alert rules: labels, annotations, runbook sections, coverage of issue 7")
    anchors = runbook_anchors()
    names = []
    for group, r in alert_rules():
        if "alert" not in r:
            continue
        a = r["alert"]
        names.append(a)
        problems = []
        labels = r.get("labels", {})
        if labels.get("service") != "cdcsync":
            problems.append("label service must be cdcsync (Alertmanager routes on it)")
        if labels.get("severity") not in ("critical", "warning"):
            problems.append("label severity must be critical or warning")
        if labels.get("component") not in ("reader", "applier", "reconcile"):
            problems.append("label component must be reader, applier or reconcile")
        ann = r.get("annotations", {})
        for k in ("summary", "description", "runbook_url"):
            if not str(ann.get(k, "")).strip():
                problems.append(f"annotation {k} missing")
        url = ann.get("runbook_url", "")
        if not url.startswith(RUNBOOK_BASE):
            problems.append(f"runbook_url {url!r} does not start with {RUNBOOK_BASE}")
        elif url[len(RUNBOOK_BASE):] != a.lower():
            problems.append(f"runbook_url anchor should be #{a.lower()}")
        elif a.lower() not in anchors:
            problems.append(f"docs/runbook.md has no section '## {a}'")
        if "for" not in r:
            problems.append("no `for:` (write `for: 0m` to fire at once on purpose)")
        if problems:
            for p in problems:
                fail(f"{a}: {p}")
        else:
            ok(f"{a} ({group}, {labels['severity']}, for {r['for']})")
    if len(set(names)) != len(names):
        fail("duplicate alert names")
    for meaning, rules in REQUIRED_ALERTS.items():
        missing = [x for x in rules if x not in names]
        if missing:
            fail(f"issue 7 asks for '{meaning}': {', '.join(missing)} missing")
        else:
            ok(f"issue 7 '{meaning}' -> {', '.join(rules)}")
    # Every runbook alert section belongs to an alert (no stale sections).
    for anchor in anchors:
        if anchor.startswith("cdcsync") and anchor not in {n.lower() for n in names}:
            fail(f"docs/runbook.md section #{anchor} has no alert")
    finish("alerts")


# ------------------------------------------------------------------ rule tests (mutation)


def promtool_test(files, cwd):
    r = subprocess.run(["promtool", "test", "rules", *files], cwd=cwd, capture_output=True,
                       text=True)
    return r.returncode, r.stdout + r.stderr


def cmd_rule_tests(_args):
    print("promtool tests, mutation check: each alert's firing and silent cases must be able to fail")
    rules_doc = load_yaml(ALERTS)
    test_docs = {}
    for fn in sorted(os.listdir(RULE_TESTS)):
        if fn.endswith((".yml", ".yaml")):
            test_docs[fn] = load_yaml(os.path.join(RULE_TESTS, fn))
    alerts = [(r["alert"], parse_duration(r.get("for", "0s"))) for _, r in alert_rules(rules_doc)
              if "alert" in r]
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "tests"))
        for name, for_s in alerts:
            fire, silent = [], []
            for fn, doc in test_docs.items():
                for t in doc.get("tests", []):
                    for c in t.get("alert_rule_test", []):
                        if c.get("alertname") != name:
                            continue
                        case = copy.deepcopy(t)
                        case["alert_rule_test"] = [c]
                        case["name"] = f"{fn}: {t.get('name', '?')} @ {c['eval_time']}"
                        if c.get("exp_alerts"):
                            fire.append(case)
                        elif parse_duration(c["eval_time"]) > for_s:
                            # A silent case evaluated before `for` has elapsed proves nothing.
                            silent.append(case)
            if not fire:
                fail(f"{name}: no test case where it fires")
            if not silent:
                fail(f"{name}: no test case where it stays silent (evaluated after its `for`)")
            for kind, cases, mutated_expr in (
                ("firing", fire, "vector(1) < 0"),  # can never fire
                ("silent", silent, "vector(1)"),    # always fires
            ):
                if not cases:
                    continue
                doc = copy.deepcopy(rules_doc)
                for _, r in alert_rules(doc):
                    if r.get("alert") == name:
                        r["expr"] = mutated_expr
                with open(os.path.join(tmp, "alerts.yml"), "w") as f:
                    yaml.safe_dump(doc, f)
                tf = os.path.join(tmp, "tests", "case.yml")
                with open(tf, "w") as f:
                    yaml.safe_dump({"rule_files": ["../alerts.yml"], "evaluation_interval": "15s",
                                    "tests": cases}, f)
                # The unmutated rules pass these cases: they are single evaluations taken from
                # the suite, which `promtool test rules` ran in full before this check.
                rc_mut, _ = promtool_test([tf], tmp)
                if rc_mut == 0:
                    fail(f"{name}: {kind} cases ({len(cases)}) still pass when the rule is "
                         f"replaced by `{mutated_expr}`: they test nothing")
                else:
                    ok(f"{name}: {len(cases)} {kind} case(s) catch `{mutated_expr}`")
    finish("rule-tests")


# ------------------------------------------------------------------ dashboard

REQUIRED_PANELS = {
    # issue 7's list -> a metric that must be queried for it
    "throughput by table/op (reader)": "cdcsync_reader_events_total",
    "throughput by table/op (applier)": "cdcsync_applier_rows_applied_total",
    "backlog per partition": "cdcsync_applier_consumer_lag_messages",
    "backlog total": "cdcsync_applier_backlog_messages",
    "end-to-end latency percentiles": "cdcsync_applier_end_to_end_latency_seconds_bucket",
    "errors": "cdcsync_applier_postgres_errors_total",
    "reader errors": "cdcsync_reader_errors_total",
    "dead letters": "cdcsync_applier_dead_letters_total",
    "snapshot progress": "cdcsync_snapshot_chunks_remaining",
    "reconciliation status": "cdcsync_reconcile_mismatches",
    "process CPU": "process_cpu_seconds_total",
    "process RSS": "process_resident_memory_bytes",
}


def cmd_dashboard(_args):
    print("Grafana dashboard: generated, well-formed, valid PromQL, required panels")
    gen = subprocess.run([sys.executable, DASHBOARD_GEN], capture_output=True, text=True)
    if gen.returncode != 0:
        fail(f"dashboard.py failed: {gen.stderr}")
    with open(DASHBOARD) as f:
        committed = f.read()
    if gen.stdout != committed:
        fail("deploy/grafana/dashboards/cdcsync.json differs from dashboard.py's output; run "
             "python3 deploy/grafana/dashboard.py > deploy/grafana/dashboards/cdcsync.json")
    else:
        ok("cdcsync.json is dashboard.py's output")
    dash = json.loads(committed)
    for k in ("uid", "title", "panels", "schemaVersion", "templating"):
        if k not in dash:
            fail(f"dashboard has no {k}")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail("panel ids are not unique")
    cells = {}
    variables = {v["name"] for v in dash["templating"]["list"]}
    exprs = []
    for p in dash["panels"]:
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24 or g["w"] <= 0 or g["h"] <= 0:
            fail(f"panel {p['title']!r} is outside the 24-column grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"panels {cells[(x, y)]!r} and {p['title']!r} overlap")
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        if not p.get("targets"):
            fail(f"panel {p['title']!r} has no query")
        for t in p.get("targets", []):
            ds = t.get("datasource", {})
            if ds.get("type") != "prometheus" or ds.get("uid") != "${datasource}":
                fail(f"panel {p['title']!r} query {t.get('refId')} does not use the datasource variable")
            for v in re.findall(r"\$(\w+)", t["expr"]):
                if not v.startswith("__") and v not in variables:
                    fail(f"panel {p['title']!r} uses undefined variable ${v}")
            exprs.append((p["title"], t["expr"]))
    ok(f"{len(dash['panels'])} panels, {len(exprs)} queries, no overlaps")
    # PromQL validity: promtool parses every query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query:{i}", "expr": grafana_to_promql(e)}
        for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        fail(f"promtool rejects a dashboard query:\n{r.stdout}{r.stderr}")
    else:
        ok(f"promtool parses all {len(exprs)} queries")
    queried = set()
    for _, e in exprs:
        queried |= promql_metric_names(grafana_to_promql(e))
    for what, metric in REQUIRED_PANELS.items():
        if metric in queried:
            ok(f"panel for {what} ({metric})")
        else:
            fail(f"no panel queries {metric} ({what})")
    # Provisioning: the datasource uid and the dashboards path the provider reads.
    ds = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/cdcsync.yml"))
    uids = [d.get("uid") for d in ds.get("datasources", [])]
    default = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    if default["current"]["value"] not in uids:
        fail(f"dashboard's default datasource {default['current']['value']!r} is not provisioned ({uids})")
    else:
        ok("datasource variable defaults to the provisioned Prometheus")
    prov = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/dashboards/cdcsync.yml"))
    providers = prov.get("providers", [])
    if not providers or providers[0].get("type") != "file" or not providers[0].get("options", {}).get("path"):
        fail("dashboard provider must be of type file with options.path")
    else:
        ok(f"dashboard provider reads {providers[0]['options']['path']}")
    finish("dashboard")


# ------------------------------------------------------------------ PrometheusRule

PROMRULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `deploy/tools/opscheck.py prometheusrule --write`.
# Do not edit: change alerts.yml and regenerate; scripts/ops-test fails when the two differ.
# For the Prometheus Operator (monitoring.coreos.com/v1). The `release`-style label that your
# Prometheus' ruleSelector matches may need adding in a kustomize overlay.
"""


def generated_promrule():
    doc = load_yaml(ALERTS)
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cdcsync", "namespace": "cdcsync",
                     "labels": {"app.kubernetes.io/part-of": "cdcsync"}},
        "spec": {"groups": doc["groups"]},
    }
    return PROMRULE_HEADER + yaml.safe_dump(rule, sort_keys=False, width=100)


def cmd_prometheusrule(args):
    print("deploy/k8s/prometheusrule.yaml carries alerts.yml's groups")
    text = generated_promrule()
    if "--write" in args:
        with open(PROMRULE, "w") as f:
            f.write(text)
        ok(f"wrote {os.path.relpath(PROMRULE, ROOT)}")
    with open(PROMRULE) as f:
        committed = f.read()
    if committed != text:
        fail("prometheusrule.yaml is not what alerts.yml generates; run "
             "deploy/tools/opscheck.py prometheusrule --write")
    else:
        ok("text equals the generated file")
    doc = load_yaml_all(PROMRULE)[0]
    if doc["spec"]["groups"] != load_yaml(ALERTS)["groups"]:
        fail("spec.groups differ from alerts.yml groups")
    else:
        ok("spec.groups equal alerts.yml groups (parsed)")
    # The operator hands spec.groups to Prometheus as a rule file: promtool must accept it.
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": doc["spec"]["groups"]}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        fail(f"promtool rejects spec.groups: {r.stdout}{r.stderr}")
    else:
        ok("promtool check rules accepts spec.groups")
    finish("prometheusrule")


if __name__ == "__main__":
    commands = {
        "metrics": cmd_metrics,
        "used-metrics": cmd_used_metrics,
        "alerts": cmd_alerts,
        "rule-tests": cmd_rule_tests,
        "dashboard": cmd_dashboard,
        "prometheusrule": cmd_prometheusrule,
    }
    try:
        import opscheck_more  # noqa: F401  (k8s, compose, dockerfile, scrape)
        commands.update(opscheck_more.COMMANDS)
    except ImportError:
        pass
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[sys.argv[1]](sys.argv[2:])
