"""The workers' tor MetricsPorts reach the balancer: tor listens on 127.0.0.1 only, the
worker's nginx serves each daemon's MetricsPort on a port of its own to the VPC's addresses
(and the security group to the balancer's group only), and the balancer's config names,
for every instance, the URL of its own tor's MetricsPort on its worker, which is where the
core reads the instance's PoW queue depth (onion/load.py)."""
from __future__ import annotations

import http.client
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from nodes import render
from nodes.payload import unpack
from nodes.render import Layout, RenderError, SiteSpec, WorkerSpec
from nodes.roles import BALANCER_CONFIG
from onion.config import load_config
from tests.conftest_tools import Nginx, free_port, onion_address_for, short_tmpdir, write_tree
from tests.stackmocks import prod_config, run

SITE = SiteSpec("news", "example.com", onion_address_for("news"))


class FakeMetricsPort:
    """Stands in for one tor's MetricsPort on 127.0.0.1: answers /metrics with its own text."""

    def __init__(self, text: str):
        body = text.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                if self.path == "/metrics":
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def serve(allow: str):
    """A worker's nginx, rendered with two daemons' MetricsPorts proxied, admitting `allow`."""
    tors = [FakeMetricsPort(f'tor_hs_rdv_pow_pqueue_count{{onion="tor{i}"}} {i * 10}\n') for i in (1, 2)]
    proxy = (free_port(), free_port())
    root, run_dir = short_tmpdir("os-wm-"), short_tmpdir("os-wr-")
    spec = WorkerSpec(sites=(SITE,), resolver="127.0.0.1", tor_daemons=2, layout=Layout(root=str(root), run_dir=str(run_dir)),
                      tor_user=None, nginx_user=None, metrics_ports=tuple(t.port for t in tors),
                      metrics_proxy_ports=proxy, metrics_allow=allow)
    write_tree(root, render.render_worker(spec))
    for d in render.worker_directories(spec):
        Path(d.path).mkdir(parents=True, exist_ok=True)
    nginx = Nginx(root / "etc/onionstack/nginx/nginx.conf")
    nginx.wait_for_socket(spec.listener(SITE, "tor1").removeprefix("unix:"))

    def close():
        nginx.stop()
        for t in tors:
            t.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return proxy, close


def test_nginx_serves_each_daemons_metricsport_on_its_own_port():
    (p1, p2), close = serve("127.0.0.0/8")
    try:
        assert get(p1) == (200, 'tor_hs_rdv_pow_pqueue_count{onion="tor1"} 10\n')
        assert get(p2) == (200, 'tor_hs_rdv_pow_pqueue_count{onion="tor2"} 20\n')
        assert get(p1, "/")[0] == 404                        # nothing but /metrics
        assert get(p1, "/metrics", method="POST")[0] == 403   # read only
    finally:
        close()


def test_nginx_refuses_addresses_outside_the_vpc():
    (p1, _), close = serve("10.42.0.0/16")   # the VPC; this client is 127.0.0.1
    try:
        assert get(p1)[0] == 403
    finally:
        close()


def test_tor_keeps_its_metricsport_on_loopback():
    spec = WorkerSpec(sites=(SITE,), resolver="10.42.0.2", tor_daemons=2, layout=Layout(root="/r"),
                      metrics_ports=(9101, 9102), metrics_proxy_ports=(9201, 9202), metrics_allow="10.42.0.0/16")
    torrc = render.render_worker(spec)["etc/onionstack/tor/tor1.torrc"].content
    assert "MetricsPort 127.0.0.1:9101\n" in torrc and "MetricsPortPolicy accept 127.0.0.1\n" in torrc


@pytest.mark.parametrize("kwargs,field", [
    ({"metrics_proxy_ports": (9201,)}, "metrics_proxy_ports"),               # one per MetricsPort
    ({"metrics_proxy_ports": (9101, 9202)}, "metrics_proxy_ports"),          # a MetricsPort itself
    ({"metrics_proxy_ports": (9201, 9202), "metrics_allow": "0.0.0.0/0"}, "metrics_allow"),
    ({"metrics_proxy_ports": (9201, 9202), "metrics_allow": None}, "metrics_allow"),
])
def test_proxy_validation_names_the_field(kwargs, field):
    with pytest.raises(RenderError, match=field):
        WorkerSpec(sites=(SITE,), resolver="10.42.0.2", tor_daemons=2, layout=Layout(root="/r"),
                   metrics_ports=(9101, 9102), **{"metrics_allow": "10.42.0.0/16", **kwargs})


def test_the_balancer_reads_every_instance_on_its_own_worker_and_daemon(tmp_path):
    result = run(prod_config())
    files = unpack(result.named("balancer-core").input("stdin"))
    config_text = files[BALANCER_CONFIG.lstrip("/")].content
    core = yaml.safe_load(config_text)
    worker_ips = {w: result.named(f"{w}-instance").state["privateIp"] for w in ("worker-1", "worker-2", "worker-3")}
    seen = set()
    for frontend in core["frontends"]:
        for instance in frontend["instances"]:
            ip, port = instance["metrics"].removeprefix("http://").removesuffix("/metrics").split(":")
            assert ip == worker_ips[instance["worker"]], instance
            seen.add((instance["worker"], int(port)))
    # each worker's daemons, each on its own proxy port: 3 workers x 2 daemons
    assert seen == {(w, p) for w in worker_ips for p in (9201, 9202)}
    # and the core's own loader takes them as each instance's MetricsPort
    for frontend in core["frontends"]:  # the master keys are secrets elsewhere: stand-ins here
        key = tmp_path / f"{frontend['name']}.key"
        subprocess.run([sys.executable, "-m", "onion", "keygen", "--out", str(key)], check=True,
                       capture_output=True, timeout=60)
        frontend["key_file"] = str(key / "hs_ed25519_secret_key")
    core["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "balancer.yaml"
    path.write_text(yaml.safe_dump(core))
    loaded = load_config(str(path))
    urls = [i.metrics for fe in loaded.frontends for i in fe.instances]
    assert urls and all(u and u.startswith("http://10.") for u in urls)


def test_the_security_group_admits_only_the_balancer_to_those_ports():
    result = run(prod_config())
    rules = [r for r in result.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
             if 9200 < int(r.input("fromPort")) < 9300]
    assert sorted(int(r.input("fromPort")) for r in rules) == [9201, 9202]
    balancer_group = result.named("access-balancer").id
    workers_group = result.named("access-worker").id
    for rule in rules:
        assert rule.input("referencedSecurityGroupId") == balancer_group
        assert rule.input("securityGroupId") == workers_group
        assert rule.input("cidrIpv4") is None and rule.input("cidrIpv6") is None
