"""The balancer's Prometheus metrics: a real HTTP listener on 127.0.0.1 serving what the
balancer's state says, scraped and parsed with prometheus_client's own parser; the names
come from onion.metric_names only; metrics failures never stop publishing."""
from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from onion import metric_names as mn
from onion.config import ConfigError, load_config
from onion.control import DescContent, DescEvent
from onion.metrics import MetricsServer, samples
from onion.probe import ProbeResult
from tests.test_balancer_core import A, B, FRONT, make, start_with_descriptors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(server: MetricsServer) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(server.describe(), timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, metric, **labels):
    hits = [v for (n, ls), v in metrics.items() if n == metric and all(dict(ls).get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (metric, labels, hits)
    return hits[0]


@pytest.fixture
def served(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    server = MetricsServer("127.0.0.1", free_port(), clock=clock, monotonic=clock)
    bal.metrics = server
    yield bal, control, proto, prober, clock, server
    server.close()


def test_metrics_follow_the_balancer_state_over_http(served):
    bal, control, proto, prober, clock, server = served
    start_with_descriptors(bal, control)
    for _text, addr, hsdir in list(control.posts):
        if hsdir != "H4":
            bal.handle(DescEvent("UPLOADED", addr, hsdir))
    bal.handle(ProbeResult(A, True, "connected", 1.25))
    bal.handle(ProbeResult(B, False, "onion introduction failed", 7.5))
    bal.handle(DescContent(address=B, hsdir="H1", descriptor_id=None, text="BOGUS descriptor\n"))
    clock.t += 2
    bal.tick()
    m = scrape(server)
    onion = f"{FRONT}.onion"
    assert value(m, "onion_balancer_instances_up", address=onion, name="news") == 2
    assert value(m, "onion_balancer_probe_success", instance=f"{A}.onion") == 1
    assert value(m, "onion_balancer_probe_success", instance=f"{B}.onion") == 0
    assert value(m, "onion_balancer_probe_latency_seconds", instance=f"{B}.onion") == 7.5
    assert value(m, "onion_balancer_rejected_descriptors_total", instance=f"{B}.onion", reason="bad_signature") == 1
    assert value(m, "onion_balancer_rejected_descriptors_total", instance=f"{A}.onion", reason="bad_signature") == 0
    assert value(m, "onion_balancer_hsdir_upload_confirmed", role="current", hsdir="H1") == 1
    assert value(m, "onion_balancer_hsdir_upload_confirmed", role="current", hsdir="H4") == 0
    assert value(m, "onion_balancer_descriptor_intro_points", role="current", descriptor="0") == 6
    assert value(m, "onion_balancer_publishing", address=onion) == 1
    # nothing read back yet: no HSDir count (0 would read as "none serves")
    assert not [k for k in m if k[0] == "onion_balancer_hsdirs_serving"]
    assert value(m, "onion_balancer_seconds_since_confirmed_upload", role="current") == pytest.approx(2, abs=1.01)
    # ages grow at scrape time, without a new snapshot
    clock.t += 100
    m = scrape(server)
    assert value(m, "onion_balancer_seconds_since_confirmed_upload", role="current") == pytest.approx(102, abs=1.01)
    # every sample's metric is one of the defined names, with the defined help
    for (name, _labels), _v in m.items():
        base = name.removesuffix("_created")
        if base.startswith("process_") or base.startswith("python_"):
            continue
        assert base in mn.BY_NAME or base + "_total" in mn.BY_NAME or base in {x.name for x in mn.ALL}, name


def test_every_defined_metric_appears_in_the_exposition_with_its_help(served):
    bal, control, *_rest, server = served
    start_with_descriptors(bal, control)
    with urllib.request.urlopen(server.describe(), timeout=10) as resp:
        text = resp.read().decode()
    for metric in mn.ALL:
        kind = "counter" if metric.counter else "gauge"
        assert f"# TYPE {metric.name} {kind}" in text, metric.name
        assert f"# HELP {metric.name} {metric.help}" in text, metric.name


def test_a_busy_metrics_port_is_logged_and_retried_while_publishing_goes_on(tmp_path, caplog):
    bal, control, proto, prober, clock = make(tmp_path)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    server = MetricsServer("127.0.0.1", port, clock=clock, monotonic=clock)
    bal.metrics = server
    try:
        with caplog.at_level(logging.ERROR, logger="onion.metrics"):
            start_with_descriptors(bal, control)
            bal.tick()
        assert control.posts, "publishing stopped because metrics could not listen"
        assert sum("cannot listen" in r.message for r in caplog.records) == 1  # once, not every tick
        blocker.close()
        clock.t += 61
        bal.tick()
        assert value(scrape(server), "onion_balancer_instances_up") == 2
    finally:
        blocker.close()
        server.close()


def test_a_broken_snapshot_still_serves_the_families(served):
    *_rest, server = served
    assert server.ensure_running()
    server.update({"frontends": [{"name": "x", "address": "y", "instances": "not a list"}]})
    with urllib.request.urlopen(server.describe(), timeout=10) as resp:
        assert resp.status == 200
        assert b"# TYPE onion_service_reachable gauge" in resp.read()


def test_samples_of_a_standby_report_no_upload_age_and_reachability_from_the_probe():
    data = {"publish": False, "tor": {"hsdirs": 8}, "frontends": [{
        "name": "news", "address": FRONT, "publishing": False, "instances": [],
        "reachability": {"ok": False, "port": 80, "path": "/", "latency_seconds": None},
        "descriptors": [{"role": "current", "first_needed_at": 0.0, "hsdirs": [
            {"hsdir": "H1", "state": "standby", "confirmed_at": 5.0,
             "served": {"state": "serving", "checked_at": 9.0, "intro_points": ["k1", "k2"]}}]}]}]}
    got = {(n, tuple(sorted(ls.items()))): v for n, ls, v in samples(data, 100.0)}
    names = {n for n, _ in got}
    assert mn.SECONDS_SINCE_CONFIRMED_UPLOAD.name not in names
    assert got[(mn.RING_HSDIRS.name, ())] == 8
    front = (("address", f"{FRONT}.onion"), ("name", "news"))
    assert got[(mn.INTRODUCTION_POINTS.name, front)] == 2
    assert got[(mn.DESCRIPTOR_REACHABLE.name, front)] == 1
    reach = [v for (n, _), v in got.items() if n == mn.SERVICE_REACHABLE.name]
    assert reach == [0.0]


@pytest.mark.parametrize("listen", ["0.0.0.0:9961", "10.0.0.5:9961", "127.0.0.1", "127.0.0.1:0", "localhost:9961"])
def test_metrics_listen_only_on_loopback(tmp_path, listen):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"metrics: {{listen: '{listen}'}}\nfrontends: [{{name: a, key_file: k, instances: ["
                   f"{A}.onion]}}]\n")
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be a loopback address.*127\.0\.0\.1:9961"):
        load_config(str(cfg), load_keys=False)


def test_metrics_listen_parsed(tmp_path):
    from onion.keys import IdentityKey

    inst = IdentityKey.generate().hostname
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"metrics: {{listen: '[::1]:9100'}}\nfrontends: [{{name: a, key_file: k, instances: ["
                   f"{{address: {inst}, worker: worker-2}}]}}]\n")
    loaded = load_config(str(cfg), load_keys=False)
    assert (loaded.metrics.host, loaded.metrics.port) == ("::1", 9100)
    assert loaded.frontends[0].instances[0].worker == "worker-2"


def _between_period_start_and_srv() -> dict:
    """A snapshot as the balancer writes it between a time period's start and the next shared
    random value: clients (and read-back) use the period tor's service side calls "next"."""
    def ups(served):
        return [{"hsdir": f"H{i}", "state": "uploaded", "confirmed_at": 5.0, "revision": 7,
                 "served": ({"state": "serving", "revision": 7, "checked_at": 9.0,
                             "intro_points": [f"k{i}", "k9"]} if served else None)} for i in range(3)]
    return {"publish": True, "tor": {"hsdirs": 8, "time_period": 101}, "frontends": [{
        "name": "news", "address": FRONT, "publishing": True, "instances": [],
        "descriptors": [{"role": "current", "time_period": 100, "first_needed_at": 0.0, "hsdirs": ups(False)},
                        {"role": "next", "time_period": 101, "first_needed_at": 0.0, "hsdirs": ups(True)}]}]}


def test_onionprobe_metrics_follow_the_period_clients_fetch_not_the_role_name():
    got = {(n, tuple(sorted(ls.items()))): v for n, ls, v in samples(_between_period_start_and_srv(), 100.0)}
    front = (("address", f"{FRONT}.onion"), ("name", "news"))
    assert got[(mn.DESCRIPTOR_REACHABLE.name, front)] == 1
    assert got[(mn.INTRODUCTION_POINTS.name, front)] == 4  # k0, k1, k2, k9
    assert got[(mn.HSDIRS_SERVING.name, front + (("role", "next"),))] == 3


def test_each_instances_load_reaches_the_metrics():
    """The PoW queue depth read from the instance's tor (on its worker's MetricsPort), the
    effort in its descriptor, and the intro points load-aware selection allows it."""
    inst = lambda addr, load, desc=True: {"address": addr, "worker": "worker-1", "healthy": True,  # noqa: E731
                                           "descriptor": {"revision": 1} if desc else None, "load": load}
    data = {"publish": True, "frontends": [{"name": "news", "address": "f" * 56, "instances": [
        inst("a" * 56, {"pow_effort": 12, "pow_queue": 120, "intro_points_allowed": 1, "why": "overloaded"}),
        inst("b" * 56, {"pow_effort": None, "pow_queue": 0, "intro_points_allowed": None}),
        inst("c" * 56, {"pow_effort": None, "pow_queue": None}, desc=False),
    ]}]}
    got: dict = {}
    for name, labels, val in samples(data, 100.0):
        got.setdefault(name, {})[labels.get("instance")] = val
    a, b, c = (x * 56 + ".onion" for x in "abc")
    assert got["onion_balancer_instance_pow_queue"] == {a: 120.0, b: 0.0}       # c: no reading
    assert got["onion_balancer_instance_pow_effort"] == {a: 12.0, b: 0.0}       # c: no descriptor
    assert got["onion_balancer_instance_intro_points_allowed"] == {a: 1.0}      # b has its full share
    for name in ("onion_balancer_instance_pow_queue", "onion_balancer_instance_pow_effort",
                 "onion_balancer_instance_intro_points_allowed"):
        assert name in mn.BY_NAME
