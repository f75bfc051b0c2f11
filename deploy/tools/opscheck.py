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
            .replace("$applier_job", "cdcsync-applier").replace("$reconcile_job", "cdcsync-reconcile"))


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
        if re.fullmatch(r"cdcsync[a-z]+", anchor) and anchor not in {n.lower() for n in names}:
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
                        case["_eval"] = doc.get("evaluation_interval", "1m")
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
                # One file per evaluation interval (it is a per-file setting in promtool).
                by_eval, tfs = {}, []
                for c in cases:
                    c = dict(c)
                    by_eval.setdefault(c.pop("_eval"), []).append(c)
                for i, (ev, cs) in enumerate(sorted(by_eval.items())):
                    tf = os.path.join(tmp, "tests", f"case{i}.yml")
                    with open(tf, "w") as f:
                        yaml.safe_dump({"rule_files": ["../alerts.yml"], "evaluation_interval": ev,
                                        "tests": cs}, f)
                    tfs.append(tf)
                # The unmutated rules pass these cases: they are single evaluations taken from
                # the suite, which `promtool test rules` ran in full before this check.
                rc_mut, _ = promtool_test(tfs, tmp)
                for tf in tfs:
                    os.unlink(tf)
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



# ------------------------------------------------------------------ configuration files

EXAMPLE_CONFIG = os.path.join(ROOT, "config/cdcsync.example.toml")


def toml_keys(doc, prefix=""):
    """Dotted keys of a parsed TOML document; inline tables that are values (secrets, tls) count
    as one key."""
    keys = set()
    for k, v in doc.items():
        if isinstance(v, dict) and not prefix:
            keys |= toml_keys(v, k + ".")
        else:
            keys.add(prefix + k)
    return keys


def shipped_configs():
    """(where, TOML text) of every cdcsync configuration shipped under deploy/."""
    import glob
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/**/*.toml"), recursive=True)):
        with open(path) as f:
            out.append((os.path.relpath(path, ROOT), f.read()))
    cm = os.path.join(K8S, "configmap.yaml")
    if os.path.exists(cm):
        for doc in load_yaml_all(cm):
            for key, text in doc.get("data", {}).items():
                if key.endswith(".toml"):
                    out.append((f"deploy/k8s/configmap.yaml:{key}", text))
    return out


def cmd_config_keys(_args):
    """Every key of the shipped configs exists in config/cdcsync.example.toml (which the binary
    documents every key in; unknown keys are errors at start)."""
    import tomllib
    print("shipped cdcsync configs use only keys of config/cdcsync.example.toml")
    with open(EXAMPLE_CONFIG, "rb") as f:
        example = tomllib.load(f)
    known = toml_keys(example)
    # Keys that the example leaves commented out (optional without default) are known too.
    with open(EXAMPLE_CONFIG) as f:
        section = ""
        for line in f:
            m = re.match(r"\s*\[([a-z_]+)\]", line)
            if m:
                section = m.group(1)
            m = re.match(r"\s*#\s*([a-z_]+)\s*=", line)
            if m and section:
                known.add(f"{section}.{m.group(1)}")
    configs = shipped_configs()
    if not configs:
        fail("no shipped configs found")
    for where, text in configs:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{where}: not valid TOML: {e}")
            continue
        sections = {k.partition(".")[0] for k in known}
        undocumented = sorted({k.partition(".")[0] for k in toml_keys(doc)} - sections)
        for sec in undocumented:
            print(f"  PENDING {where}: section [{sec}] is not in config/cdcsync.example.toml yet; its keys are unchecked")
        unknown = sorted(k for k in toml_keys(doc) - known if k.partition(".")[0] in sections)
        if unknown:
            fail(f"{where}: keys not in config/cdcsync.example.toml: {', '.join(unknown)}")
        else:
            ok(f"{where}: {len(toml_keys(doc))} keys, all known")
    finish("config-keys")


# ------------------------------------------------------------------ systemd wiring


def cmd_systemd_wiring(_args):
    """The units, their example configs and prometheus.yml agree: ExecStart's --config is the
    installed config, each secret file is a credential the unit loads, and the scrape targets are
    the configs' telemetry.bind."""
    import tomllib
    print("systemd units, their configs and prometheus.yml agree")
    prom = load_yaml(os.path.join(ROOT, "deploy/prometheus/prometheus.yml"))
    targets = {(j["job_name"], t) for j in prom["scrape_configs"] for sc in j.get("static_configs", [])
               for t in sc["targets"]}
    for component in ("reader", "applier", "reconcile"):
        unit_name = f"cdcsync-{component}.service"
        with open(os.path.join(ROOT, "deploy/systemd", unit_name)) as f:
            unit = f.read()
        m = re.search(r"^ExecStart=\S*cdcsync (\S+) --config (\S+)\s*$", unit, re.M)
        if not m or m.group(1) != component or m.group(2) != f"/etc/cdcsync/{component}.toml":
            fail(f"{unit_name}: ExecStart must run `cdcsync {component} --config /etc/cdcsync/{component}.toml`")
            continue
        creds = dict(re.findall(r"^LoadCredential=([^:\s]+):(\S+)$", unit, re.M))
        with open(os.path.join(ROOT, "deploy/systemd", f"{component}.toml"), "rb") as f:
            cfg = tomllib.load(f)
        for section, values in cfg.items():
            pw = values.get("password") if isinstance(values, dict) else None
            if isinstance(pw, str):
                fail(f"{component}.toml: {section}.password is inline; use the credential file")
            elif isinstance(pw, dict) and "file" in pw:
                d, _, cred = pw["file"].rpartition("/")
                if d != f"/run/credentials/{unit_name}" or cred not in creds:
                    fail(f"{component}.toml: {section}.password file {pw['file']} is not a credential "
                         f"{unit_name} loads ({', '.join(creds) or 'none'})")
        bind = cfg.get("telemetry", {}).get("bind", "127.0.0.1:9464")
        if (f"cdcsync-{component}", bind) not in targets:
            fail(f"prometheus.yml has no cdcsync-{component} target {bind} ({component}.toml telemetry.bind)")
        stop = cfg.get("telemetry", {}).get("shutdown_timeout_ms", 10000)
        m = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
        if not m or int(m.group(1)) * 1000 <= stop:
            fail(f"{unit_name}: TimeoutStopSec must exceed telemetry.shutdown_timeout_ms {stop}")
        if not failures:
            ok(f"{unit_name}: config, credentials {', '.join(creds)}, scraped at {bind}")
    finish("systemd-wiring")


# ------------------------------------------------------------------ Kubernetes

K8S_VERSION = "1.31.0"


def k8s_docs():
    docs = []
    for fn in sorted(os.listdir(K8S)):
        if fn.endswith((".yaml", ".yml")):
            for d in load_yaml_all(os.path.join(K8S, fn)):
                docs.append((fn, d))
    return docs


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def cmd_k8s(_args):
    import tomllib
    print(f"Kubernetes manifests in deploy/k8s (schemas of Kubernetes {K8S_VERSION})")
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        kv = None
        fail("kubernetes-validate is not importable: run this with the venv scripts/ops-test makes")
    docs = k8s_docs()
    by_kind = {}
    for fn, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((fn, d))
    # Kustomization lists every manifest except the Secret example.
    kust = load_yaml(os.path.join(K8S, "kustomization.yaml"))
    listed = set(kust.get("resources", []))
    files = {fn for fn in os.listdir(K8S) if fn.endswith((".yaml", ".yml"))}
    for fn in sorted(files - listed - {"kustomization.yaml", "secret.example.yaml"}):
        fail(f"{fn} is not in kustomization.yaml resources")
    for fn in sorted(listed - files):
        fail(f"kustomization.yaml lists missing {fn}")
    if "secret.example.yaml" in listed:
        fail("kustomization.yaml must not apply secret.example.yaml (placeholder passwords)")
    ok(f"kustomization.yaml lists {len(listed)} manifests")
    # Schema validation of built-in kinds; custom resources are checked below.
    for fn, d in docs:
        kind = d.get("kind")
        if d.get("apiVersion", "").startswith(("monitoring.coreos.com/", "kustomize.config.k8s.io/")):
            continue
        if kv is None:
            continue
        try:
            kv.validate(d, K8S_VERSION, strict=True)
            ok(f"{fn}: {kind}/{d['metadata']['name']} valid (strict schema)")
        except Exception as e:  # ValidationError, SchemaNotFoundError
            fail(f"{fn}: {kind}/{d.get('metadata', {}).get('name')}: {str(e).splitlines()[0]}")
    # The configuration the pods load.
    cms = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d for _, d in by_kind.get("Secret", [])}
    deployments = {d["metadata"]["name"]: d for _, d in by_kind.get("Deployment", [])}
    for name, component in (("cdcsync-reader", "reader"), ("cdcsync-applier", "applier"),
                            ("cdcsync-reconcile", "reconcile")):
        dep = deployments.get(name)
        if dep is None:
            fail(f"no Deployment {name}")
            continue
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        plabels = spec["template"]["metadata"]["labels"]
        where = f"Deployment {name}"
        if not labels_match(spec["selector"], plabels):
            fail(f"{where}: selector does not match the pod labels")
        if component == "reader":
            if spec.get("replicas") != 1:
                fail(f"{where}: replicas must be 1 (one binlog reader per source)")
            if spec.get("strategy", {}).get("type") != "Recreate":
                fail(f"{where}: strategy must be Recreate (never two readers at once)")
        elif component == "applier":
            if spec.get("replicas", 1) < 1 or spec.get("strategy", {}).get("type") == "Recreate":
                fail(f"{where}: appliers scale out with a rolling update")
        sc = pod.get("securityContext", {})
        if not sc.get("runAsNonRoot"):
            fail(f"{where}: pod must set runAsNonRoot")
        (c,) = pod["containers"]
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False or not csc.get("readOnlyRootFilesystem") \
                or "ALL" not in csc.get("capabilities", {}).get("drop", []):
            fail(f"{where}: container must drop ALL capabilities, no privilege escalation, read-only root")
        args = c.get("args", [])
        if len(args) != 3 or args[0] != component or args[1] != "--config":
            fail(f"{where}: args must be ['{component}', '--config', FILE], not {args}")
            continue
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            hg = c.get(probe, {}).get("httpGet", {})
            if hg.get("path") != path or hg.get("port") not in ports:
                fail(f"{where}: {probe} must GET {path} on a named container port")
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(k, {}):
                    fail(f"{where}: resources.{k}.{r} missing")
        # Config file: mounted from the ConfigMap, parses, binds the probed port on all addresses.
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        m = mounts.get(args[2])
        if not m or "configMap" not in vols.get(m["name"], {}):
            fail(f"{where}: {args[2]} is not mounted from a ConfigMap")
            continue
        cm = cms.get(vols[m["name"]]["configMap"]["name"])
        text = (cm or {}).get("data", {}).get(m.get("subPath", ""))
        if text is None:
            fail(f"{where}: ConfigMap key {m.get('subPath')} missing")
            continue
        cfg = tomllib.loads(text)
        bind = cfg.get("telemetry", {}).get("bind", "127.0.0.1:9464")
        host, _, port = bind.rpartition(":")
        if host not in ("0.0.0.0", "[::]") or int(port) != ports.get("metrics"):
            fail(f"{where}: telemetry.bind {bind} must be 0.0.0.0:<metrics containerPort {ports.get('metrics')}>")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        stop_ms = cfg.get("telemetry", {}).get("shutdown_timeout_ms", 10000)
        if grace * 1000 <= stop_ms:
            fail(f"{where}: terminationGracePeriodSeconds {grace} must exceed telemetry.shutdown_timeout_ms {stop_ms}")
        # Every secret file the config names is a key of a mounted Secret.
        secret_files = {}
        for mpath, mm in mounts.items():
            v = vols.get(mm["name"], {})
            if "secret" in v:
                sname = v["secret"]["secretName"]
                for item in v["secret"].get("items", []):
                    secret_files[os.path.join(mpath, item["path"])] = (sname, item["key"])
        for section in cfg.values():
            if isinstance(section, dict) and isinstance(section.get("password"), dict):
                pw = section["password"]
                if "file" in pw:
                    if pw["file"] not in secret_files:
                        fail(f"{where}: password file {pw['file']} is not a mounted Secret key")
                    else:
                        sname, key = secret_files[pw["file"]]
                        ex = secrets.get(sname)
                        if ex is None or key not in ex.get("stringData", {}) | ex.get("data", {}):
                            fail(f"{where}: Secret {sname} (secret.example.yaml) has no key {key}")
                elif "env" not in pw:
                    fail(f"{where}: a password is inline in the ConfigMap; use a Secret file")
            elif isinstance(section, dict) and isinstance(section.get("password"), str):
                fail(f"{where}: a password is inline in the ConfigMap; use a Secret file")
        ok(f"{where}: {component}, replicas {spec.get('replicas')}, {spec.get('strategy', {}).get('type')}, "
           f"probes, resources, grace {grace}s > {stop_ms} ms, config and secrets wired")
    # PodMonitor selects both pods and names the jobs the alerts use.
    pms = by_kind.get("PodMonitor", []) + by_kind.get("ServiceMonitor", [])
    if not pms:
        fail("no PodMonitor or ServiceMonitor")
    for fn, pm in pms:
        spec = pm.get("spec", {})
        if pm["kind"] != "PodMonitor":
            continue
        eps = spec.get("podMetricsEndpoints", [])
        if not eps:
            fail(f"{fn}: no podMetricsEndpoints")
        jobs = set()
        for name, dep in deployments.items():
            plabels = dep["spec"]["template"]["metadata"]["labels"]
            if labels_match(spec.get("selector", {}), plabels):
                jobs.add(plabels.get(spec.get("jobLabel", ""), f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"))
                ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                for ep in eps:
                    if ep.get("port") not in ports:
                        fail(f"{fn}: endpoint port {ep.get('port')} not on {name}")
                    if ep.get("path", "/metrics") != "/metrics":
                        fail(f"{fn}: path must be /metrics")
        want = {"cdcsync-reader", "cdcsync-applier", "cdcsync-reconcile"}
        if jobs != want:
            fail(f"{fn}: scrape jobs would be {sorted(jobs)}, the alerts expect {sorted(want)}")
        else:
            ok(f"{fn}: selects every cdcsync pod; jobs {', '.join(sorted(jobs))}")
    prs = by_kind.get("PrometheusRule", [])
    if len(prs) != 1 or prs[0][1].get("apiVersion") != "monitoring.coreos.com/v1":
        fail("expected one monitoring.coreos.com/v1 PrometheusRule")
    else:
        ok("PrometheusRule present (contents: see the prometheusrule check)")
    finish("k8s")


# ------------------------------------------------------------------ docker compose

COMPOSE_SERVICES = {
    # service: required image prefix (None: built from the Dockerfile)
    "mysql": "mysql:8.4",
    "kafka": "apache/kafka:",
    "postgres": "postgres:",
    "prometheus": "prom/prometheus:",
    "alertmanager": "prom/alertmanager:",
    "grafana": "grafana/grafana",
    "reader": None,
    "applier": None,
    "reconcile": None,
}


def cmd_compose(_args):
    import tomllib
    print("docker-compose.yml (offline: structure, references, mounts; no Docker engine here)")
    doc = load_yaml(COMPOSE)
    services = doc.get("services", {})
    named_volumes = set((doc.get("volumes") or {}).keys())
    for name, image in COMPOSE_SERVICES.items():
        svc = services.get(name)
        if svc is None:
            fail(f"service {name} missing")
            continue
        if image is None:
            b = svc.get("build", {})
            ctx = b.get("context", ".") if isinstance(b, dict) else b
            df = b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile"
            if not b or not os.path.exists(os.path.join(ROOT, ctx, df)):
                fail(f"{name}: must be built from the repository's Dockerfile")
        elif not str(svc.get("image", "")).startswith(image):
            fail(f"{name}: image {svc.get('image')!r} should start with {image!r}")
    # References: depends_on, bind-mount sources, named volumes.
    mounts = {}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for d in (deps if isinstance(deps, (list, dict)) else []):
            if d not in services:
                fail(f"{name}: depends_on unknown service {d}")
        for v in svc.get("volumes", []):
            if isinstance(v, dict):
                src, dst = v.get("source"), v.get("target")
            else:
                parts = v.split(":")
                src, dst = parts[0], parts[1]
            if src.startswith((".", "/")):
                path = os.path.normpath(os.path.join(ROOT, src))
                if not os.path.exists(path):
                    fail(f"{name}: bind-mount source {src} does not exist")
                mounts.setdefault(name, {})[dst] = os.path.relpath(path, ROOT)
            elif src not in named_volumes:
                fail(f"{name}: volume {src} is not declared under volumes:")
    # The same rule, config and dashboard files as the rest of deploy/.
    want = {
        "prometheus": ["deploy/prometheus/alerts.yml", "deploy/prometheus/prometheus-compose.yml"],
        "alertmanager": ["deploy/alertmanager/alertmanager.yml"],
        "grafana": ["deploy/grafana/dashboards", "deploy/grafana/provisioning/datasources",
                    "deploy/grafana/provisioning/dashboards"],
    }
    for name, paths in want.items():
        have = set(mounts.get(name, {}).values())
        for p in paths:
            if p not in have:
                fail(f"{name}: does not mount {p}")
    prom = services.get("prometheus", {})
    pm = mounts.get("prometheus", {})
    cfg = next((a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")), None)
    if cfg is None or pm.get(cfg) != "deploy/prometheus/prometheus-compose.yml":
        fail("prometheus: --config.file must be the mounted prometheus-compose.yml")
    elif os.path.join(os.path.dirname(cfg), "alerts.yml") not in pm:
        fail("prometheus: alerts.yml must be mounted next to its config (rule_files: [alerts.yml])")
    prov = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/dashboards/cdcsync.yml"))
    dash_path = prov["providers"][0]["options"]["path"]
    if mounts.get("grafana", {}).get(dash_path) != "deploy/grafana/dashboards":
        fail(f"grafana: deploy/grafana/dashboards must be mounted at the provider's path {dash_path}")
    ds = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/cdcsync.yml"))
    url = ds["datasources"][0]["url"]
    if not re.match(r"http://prometheus:9090/?$", url):
        fail(f"grafana datasource url {url} does not point at the prometheus service")
    # Prometheus scrapes the reader and applier services on their telemetry ports.
    pc = load_yaml(os.path.join(ROOT, "deploy/prometheus/prometheus-compose.yml"))
    targets = set()
    for job in pc["scrape_configs"]:
        for sc in job.get("static_configs", []):
            targets |= {(job["job_name"], t) for t in sc["targets"]}
        for sd in job.get("dns_sd_configs", []):
            targets |= {(job["job_name"], f"{n}:{sd['port']}") for n in sd["names"]}
    for name, job in (("reader", "cdcsync-reader"), ("applier", "cdcsync-applier"),
                      ("reconcile", "cdcsync-reconcile")):
        svc = services.get(name, {})
        cmdline = svc.get("command", [])
        if len(cmdline) < 3 or cmdline[0] != name or cmdline[1] != "--config":
            fail(f"{name}: command must be [{name}, --config, FILE]")
            continue
        src = mounts.get(name, {}).get(cmdline[2])
        if src is None:
            fail(f"{name}: config {cmdline[2]} is not mounted")
            continue
        with open(os.path.join(ROOT, src), "rb") as f:
            cfg = tomllib.load(f)
        env = svc.get("environment", {})
        bind = env.get("CDCSYNC__TELEMETRY__BIND") or cfg.get("telemetry", {}).get("bind", "127.0.0.1:9464")
        port = bind.rpartition(":")[2]
        if not bind.startswith("0.0.0.0:"):
            fail(f"{name}: telemetry.bind {bind} is not reachable from the prometheus container")
        if (job, f"{name}:{port}") not in targets:
            fail(f"{name}: prometheus-compose.yml has no {job} target {name}:{port}")
        else:
            ok(f"{name}: {cmdline[2]} from {src}, scraped as {job} at {name}:{port}")
    ok(f"{len(services)} services; every bind-mount source exists")
    finish("compose")


# ------------------------------------------------------------------ Dockerfile


def cmd_dockerfile(_args):
    print("Dockerfile: multi-stage, small non-root runtime, the cdcsync binary as entrypoint")
    with open(DOCKERFILE) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines = [ln for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages = []
    for ln in lines:
        word, _, rest = ln.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            stages.append({"image": m.group(1), "name": m.group(2), "ins": []})
        elif stages:
            stages[-1]["ins"].append((word, rest.strip()))
    if len(stages) < 2:
        fail("not multi-stage (a build stage and a runtime stage)")
        finish("dockerfile")
    build, final = stages[0], stages[-1]
    if not build["image"].startswith("rust:"):
        fail(f"build stage should use the rust image, not {build['image']}")
    if not any(w == "RUN" and "cargo build" in r and "--release" in r and "--locked" in r for w, r in build["ins"]):
        fail("build stage must run cargo build --release --locked")
    if not re.match(r"(debian:[a-z]+-slim|gcr\.io/distroless/cc)", final["image"]):
        fail(f"runtime stage should be debian:*-slim or distroless/cc, not {final['image']}")
    if any("cargo" in r for _, r in final["ins"]):
        fail("runtime stage must not contain the toolchain")
    copies = [r for w, r in final["ins"] if w == "COPY" and r.startswith("--from=")]
    if not any(build["name"] and f"--from={build['name']}" in r and "cdcsync" in r for r in copies):
        fail("runtime stage must COPY the cdcsync binary --from the build stage")
    users = [r for w, r in final["ins"] if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        fail("runtime stage must end with a non-root USER")
    elif not re.fullmatch(r"\d+(:\d+)?", users[-1]):
        fail("USER should be numeric so that runAsNonRoot can verify it")
    ep = [r for w, r in final["ins"] if w == "ENTRYPOINT"]
    if not ep or "cdcsync" not in ep[-1] or not ep[-1].startswith("["):
        fail("ENTRYPOINT must be the cdcsync binary in exec form")
    exposed = [r for w, r in final["ins"] if w == "EXPOSE"]
    if not any("9464" in r for r in exposed):
        fail("EXPOSE 9464 (telemetry) missing")
    # The image's user is the one the Kubernetes pods run as.
    for _, d in k8s_docs():
        if d.get("kind") == "Deployment":
            uid = d["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
            if users and str(uid) != users[-1].split(":")[0]:
                fail(f"{d['metadata']['name']}: runAsUser {uid} differs from the image's USER {users[-1]}")
    # .dockerignore keeps target/ and local state out of the build context.
    di = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(di) or not re.search(r"^/?target/?$", open(di).read(), re.M):
        fail(".dockerignore must exclude target/")
    if not failures:
        ok(f"{len(stages)} stages: {build['image']} -> {final['image']}, USER {users[-1]}, {ep[-1]}")
    finish("dockerfile")


# ------------------------------------------------------------------ scrape


def exported_names(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def cmd_scrape(args):
    """scrape [--pending PREFIX=REASON]... URL...: a name that starts with a pending PREFIX and
    is not exported is reported as pending (the feature that exports it is not built yet)
    instead of failing."""
    print("every metric used by alerts and dashboard is exported by the running binaries")
    pending = {}
    while args and args[0] == "--pending":
        prefix, _, reason = args[1].partition("=")
        pending[prefix] = reason
        args = args[2:]
    if not args:
        fail("usage: scrape [--pending PREFIX=REASON]... URL...")
        finish("scrape")
    _, hist = documented_metrics()
    exported = {}
    for url in args:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError as e:
            fail(f"cannot scrape {url}: {e}")
            continue
        for n in exported_names(text):
            exported.setdefault(base_name(n, hist), set()).add(url)
        ok(f"scraped {url}: {len(exported_names(text))} names")
    used = sorted({base_name(n, hist) for n in used_metrics()} - PROMETHEUS_BUILTIN)
    for name in used:
        reason = next((r for p, r in pending.items() if name.startswith(p)), None)
        if name in exported:
            ok(f"{name} exported by {', '.join(sorted(exported[name]))}")
        elif reason:
            print(f"  PENDING {name}: not exported; {reason}")
        else:
            fail(f"{name} is used by alerts/dashboard but not exported")
    finish("scrape")


# ------------------------------------------------------------------ self test


def cmd_selftest(_args):
    """The name extraction above must find what it should and nothing else, or the metrics
    checks would pass vacuously."""
    print("self-test of the PromQL name extraction")
    cases = {
        'sum by (job) (cdcsync_applier_backlog_messages) > 10000': {"cdcsync_applier_backlog_messages"},
        'up{job="cdcsync-reader"} == 0 or absent(up{job="cdcsync-reader"})': {"up"},
        'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{a="b"}[5m]))) > 60': {"x_bucket"},
        'increase(a_total[15m]) > 0 or (a_total > 0 unless a_total offset 15m)': {"a_total"},
        'time() - b_seconds > 300 and on (instance) c > 1e3': {"b_seconds", "c"},
        'sum without (le) (d) + on () group_left (table) e': {"d", "e"},
        'count(ALERTS{service="cdcsync", alertstate="firing"}) or vector(0)': {"ALERTS"},
    }
    for expr, want in cases.items():
        got = promql_metric_names(expr)
        if got != want:
            fail(f"{expr!r}: got {sorted(got)}, want {sorted(want)}")
        else:
            ok(f"{expr[:60]!r} -> {sorted(got)}")
    _, hist = documented_metrics()
    if base_name("cdcsync_applier_end_to_end_latency_seconds_bucket", hist) != "cdcsync_applier_end_to_end_latency_seconds":
        fail("histogram suffixes are not mapped to their metric")
    if base_name("cdcsync_reader_events_total", hist) != "cdcsync_reader_events_total":
        fail("a counter's name must stay as it is")
    finish("selftest")


if __name__ == "__main__":
    commands = {
        "metrics": cmd_metrics,
        "used-metrics": cmd_used_metrics,
        "alerts": cmd_alerts,
        "rule-tests": cmd_rule_tests,
        "dashboard": cmd_dashboard,
        "prometheusrule": cmd_prometheusrule,
    }
    commands.update({
        "k8s": cmd_k8s,
        "compose": cmd_compose,
        "dockerfile": cmd_dockerfile,
        "scrape": cmd_scrape,
        "config-keys": cmd_config_keys,
        "systemd-wiring": cmd_systemd_wiring,
        "selftest": cmd_selftest,
    })
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[sys.argv[1]](sys.argv[2:])
