#!/usr/bin/env python3
"""Helpers for the live part of scripts/ops-test (real binaries, Prometheus, Alertmanager).

    free-ports N                      print N free TCP ports on 127.0.0.1
    config ROLE OUT KEY=VALUE...      write a cdcsync config for ROLE (reader|applier|reconcile), from
                                      config/cdcsync.example.toml so every section the binary
                                      requires is present, with KEY=VALUE overrides (dotted keys;
                                      values are TOML literals, e.g. 'source.name="ops1"'; a key
                                      written '?section.key' is set only if the example has the
                                      section)
    backlog-rules OUT THRESHOLD FOR   write a rule file holding CdcsyncBacklogHigh from alerts.yml
                                      with only its threshold and `for:` changed (the test cannot
                                      wait the production 2 minutes)
    alertmanager-config OUT SMTP_PORT WEBHOOK_URL
                                      alertmanager.yml with the same routes and receivers, its SMTP
                                      relay and webhook pointed at the local sinks and short waits
    proxy LISTEN_PORT HOST:PORT       a TCP proxy; SIGUSR1 cuts every connection and refuses new
                                      ones (a warehouse outage), SIGUSR2 restores service
    sinks WEBHOOK_PORT SMTP_PORT DIR  a webhook receiver (DIR/webhook.jsonl) and an SMTP server
                                      (DIR/mail.txt), both on 127.0.0.1
    wait-alert URL ALERT TIMEOUT      poll Prometheus' /api/v1/alerts until ALERT is firing
    wait-metric URL EXPR TIMEOUT      poll a /metrics page until the metric named by EXPR
                                      ("name>=N") is exported and the sum of its samples is >= N
    wait-file FILE REGEX TIMEOUT      wait until FILE contains REGEX
"""

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
import tomllib
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_ports(n):
    socks, ports = [], []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


# ------------------------------------------------------------------ configuration


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


# Sections each role's config carries; the others are dropped (the reader has no warehouse).
ROLE_SECTIONS = {
    "reader": ("source", "kafka", "telemetry", "reader", "snapshot"),
    "applier": ("kafka", "warehouse", "telemetry", "applier"),
    "reconcile": ("source", "kafka", "warehouse", "telemetry", "reconcile"),
}


def write_config(role, out, *overrides):
    with open(os.path.join(ROOT, "config/cdcsync.example.toml"), "rb") as f:
        cfg = tomllib.load(f)
    cfg = {k: v for k, v in cfg.items() if k in ROLE_SECTIONS[role]}
    for o in overrides:
        key, _, literal = o.partition("=")
        optional = key.startswith("?")
        section, _, name = key.lstrip("?").partition(".")
        if optional and section not in cfg:
            continue
        value = tomllib.loads(f"v = {literal}")["v"]
        cfg.setdefault(section, {})[name] = value
    with open(out, "w") as f:
        for section, values in cfg.items():
            f.write(f"[{section}]\n")
            for k, v in values.items():
                f.write(f"{k} = {toml_value(v)}\n")
            f.write("\n")


def backlog_rules(out, threshold, for_):
    with open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")) as f:
        doc = yaml.safe_load(f)
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == "CdcsyncBacklogHigh":
                expr, n = re.subn(r">\s*\d+\s*$", f"> {int(threshold)}", r["expr"].strip())
                if n != 1:
                    sys.exit("CdcsyncBacklogHigh's expr no longer ends in '> N'; update livetest.py")
                rule = dict(r, expr=expr)
                rule["for"] = for_
                with open(out, "w") as f:
                    yaml.safe_dump({"groups": [{"name": "ops-test", "rules": [rule]}]}, f)
                return
    sys.exit("CdcsyncBacklogHigh not found in alerts.yml")


def alertmanager_config(out, smtp_port, webhook_url):
    with open(os.path.join(ROOT, "deploy/alertmanager/alertmanager.yml")) as f:
        doc = yaml.safe_load(f)
    g = doc["global"]
    g["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    g["smtp_require_tls"] = False
    for k in ("smtp_auth_username", "smtp_auth_password", "smtp_auth_password_file"):
        g.pop(k, None)
    doc["route"]["group_wait"] = "1s"
    doc["route"]["group_interval"] = "5s"
    n = 0
    for r in doc["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = webhook_url
            n += 1
    if n == 0 or not any(r.get("email_configs") for r in doc["receivers"]):
        sys.exit("alertmanager.yml has no webhook or no email receiver")
    with open(out, "w") as f:
        yaml.safe_dump(doc, f)


# ------------------------------------------------------------------ proxy


def proxy(listen_port, target):
    host, _, port = target.rpartition(":")
    state = {"up": True, "conns": {}}

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        if not state["up"]:
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        tasks = {asyncio.ensure_future(pipe(client_r, up_w)),
                 asyncio.ensure_future(pipe(up_r, client_w))}
        key = id(tasks)
        state["conns"][key] = (client_w, up_w, tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        client_w.close()
        up_w.close()
        state["conns"].pop(key, None)

    def cut():
        state["up"] = False
        for client_w, up_w, tasks in list(state["conns"].values()):
            for t in tasks:
                t.cancel()
            client_w.close()
            up_w.close()
        print("proxy: down", flush=True)

    def restore():
        state["up"] = True
        print("proxy: up", flush=True)

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, cut)
        loop.add_signal_handler(signal.SIGUSR2, restore)
        server = await asyncio.start_server(handle, "127.0.0.1", int(listen_port))
        print(f"proxy: 127.0.0.1:{listen_port} -> {target}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------------ sinks


def sinks(webhook_port, smtp_port, outdir):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with open(os.path.join(outdir, "webhook.jsonl"), "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", int(webhook_port)), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    # A minimal SMTP server (RFC 5321 subset that Alertmanager uses without TLS and auth).
    async def smtp(reader, writer):
        def send(line):
            writer.write((line + "\r\n").encode())
        send("220 ops-test ESMTP")
        rcpt, data_mode, lines = [], False, []
        while line := await reader.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            if data_mode:
                if text == ".":
                    data_mode = False
                    with open(os.path.join(outdir, "mail.txt"), "a") as f:
                        f.write(f"RCPT {' '.join(rcpt)}\n" + "\n".join(lines) + "\n.\n")
                    lines, rcpt = [], []
                    send("250 OK")
                else:
                    lines.append(text[1:] if text.startswith("..") else text)
                continue
            verb = text.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                send("250 ops-test")
            elif verb == "MAIL":
                send("250 OK")
            elif verb == "RCPT":
                rcpt.append(text.split(":", 1)[1].strip())
                send("250 OK")
            elif verb == "DATA":
                data_mode = True
                send("354 go ahead")
            elif verb == "QUIT":
                send("221 bye")
                await writer.drain()
                break
            else:
                send("250 OK")
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(smtp, "127.0.0.1", int(smtp_port))
        print(f"sinks: webhook 127.0.0.1:{webhook_port}, smtp 127.0.0.1:{smtp_port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------------ waiting


def wait_alert(url, alert, timeout):
    deadline = time.time() + float(timeout)
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/api/v1/alerts", timeout=3) as r:
                alerts = json.load(r)["data"]["alerts"]
            last = [(a["labels"]["alertname"], a["state"]) for a in alerts]
            for a in alerts:
                if a["labels"]["alertname"] == alert and a["state"] == "firing":
                    print(f"{alert} firing: value {a.get('value')}, labels {a['labels']}")
                    return
        except OSError as e:
            last = str(e)
        time.sleep(1)
    sys.exit(f"{alert} not firing after {timeout} s; last /api/v1/alerts: {last}")


def scrape_sum(url, name):
    with urllib.request.urlopen(url, timeout=3) as r:
        text = r.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            total += float(m.group(3))
            seen = True
    return total, seen


def wait_metric(url, expr, timeout):
    name, _, n = expr.partition(">=")
    deadline = time.time() + float(timeout)
    last = None
    while time.time() < deadline:
        try:
            last, seen = scrape_sum(url, name)
            if seen and last >= float(n):
                print(f"{name} = {last:g}")
                return
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    sys.exit(f"{name} did not reach {n} within {timeout} s at {url} (last: {last})")


def wait_file(path, regex, timeout):
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                m = re.search(regex, f.read())
            if m:
                print(f"{os.path.basename(path)}: {m.group(0)[:120]}")
                return
        time.sleep(0.5)
    sys.exit(f"{path} has no match for {regex!r} after {timeout} s")


if __name__ == "__main__":
    cmds = {
        "free-ports": free_ports, "config": write_config, "backlog-rules": backlog_rules,
        "alertmanager-config": alertmanager_config, "proxy": proxy, "sinks": sinks,
        "wait-alert": wait_alert, "wait-metric": wait_metric, "wait-file": wait_file,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])
