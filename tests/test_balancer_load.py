"""Load-aware intro selection (onion.load): an instance whose own descriptor suggests a PoW
effort, or whose tor's MetricsPort shows a deep PoW queue, gets fewer introduction points in
the frontend's descriptors, and its full share back after it has been calm a while; status
says why. Unit tests of the weighting, then the balancer driven by the fakes of
tests/test_balancer_core.py, then the readings' formats as tor writes them."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from onion.balancer import Balancer
from onion.config import BalancerConfig, ConfigError, ControlEndpoint, FrontendConfig, InstanceConfig, \
    ProbeSettings, load_config
from onion.instances import Decoded
from onion.load import InstanceLoad, LoadPolicy, assess, queue_depth, suggested_effort, weigh
from tests.test_balancer_core import (A, B, FRONT, IP, Clock, FakeControl, FakeIdentity, FakeProber, FakeProtocol,
                                      confirm_all, content, posted_keys)

POLICY = LoadPolicy(effort_threshold=10, queue_threshold=50, overloaded_share=1, recover_seconds=300)


# ---------------------------------------------------------------- the weighting
def test_an_overloaded_instance_keeps_its_share_then_recovers_after_calm():
    load = InstanceLoad()
    assert assess(load, 0, 5.0, 3, POLICY, now=0) == 3 and load.reason == ""
    assert assess(load, 40, 5.0, 3, POLICY, now=10) == 1
    assert load.reason == "overloaded (suggested PoW effort 40 >= 10): 1 of 3 intro points"
    # calm again: still reduced until recover_seconds have passed, then back
    assert assess(load, 0, 5.0, 3, POLICY, now=20) == 1 and load.reason.startswith("recovering: calm for 0 of 300 s")
    assert assess(load, 0, 5.0, 3, POLICY, now=200) == 1 and "calm for 180 of 300 s" in load.reason
    assert assess(load, 60, 5.0, 3, POLICY, now=250) == 1 and load.calm_since is None   # overloaded again
    assert assess(load, 0, 5.0, 3, POLICY, now=260) == 1                               # calm restarts
    assert assess(load, 0, 5.0, 3, POLICY, now=561) == 3 and load.reason == "" and load.slots is None


def test_queue_depth_counts_and_stale_readings_do_not():
    load = InstanceLoad(queue=80, queue_at=0.0)
    assert assess(load, None, None, 4, POLICY, now=10) == 1
    assert load.reason.startswith("overloaded (PoW queue 80 >= 50)")
    stale = InstanceLoad(queue=80, queue_at=0.0)
    assert assess(stale, 500, POLICY.max_age + 1, 4, POLICY, now=POLICY.max_age + 1) == 4  # both readings too old
    off = LoadPolicy(enabled=False)
    assert assess(InstanceLoad(), 10**6, 1.0, 4, off, now=0) == 4


def test_weigh_trims_only_some_never_all():
    groups = [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
    loads = [InstanceLoad(), InstanceLoad()]
    assert weigh(groups, loads, [99, 0], [1.0, 1.0], POLICY, 0) == [["a1"], ["b1", "b2", "b3"]]
    loads = [InstanceLoad(), InstanceLoad()]
    assert weigh(groups, loads, [99, 99], [1.0, 1.0], POLICY, 0) == groups
    assert all("like every instance: keeps all 3 intro points" in l.reason for l in loads)
    assert weigh(groups, [InstanceLoad(), InstanceLoad()], [5, None], [1.0, None], POLICY, 0) == groups


# ---------------------------------------------------------------- the balancer
class EffortProtocol(FakeProtocol):
    """Descriptor text: 'DESC <address> <period> <revision> <keys> [expiry] [effort=N]'."""

    def decode(self, text, address, periods, now):
        parts = text.split()
        effort = next((int(p.split("=")[1]) for p in parts if p.startswith("effort=")), None)
        d = super().decode(" ".join(p for p in parts if not p.startswith("effort=")), address, periods, now)
        return Decoded(d.intro_points, d.revision, d.period, d.blinded_key, d.signing_key_expiry, pow_effort=effort)


def make(tmp_path, *, metrics: dict | None = None, policy: LoadPolicy = POLICY):
    metrics = metrics or {}
    cfg = BalancerConfig(publish=True, control=ControlEndpoint(port=9051), socks_port=9050,
                         state_dir=str(tmp_path / "state"),
                         frontends=(FrontendConfig(name="news", key_file="unused", instances=tuple(
                             InstanceConfig(a, metrics=metrics.get(a)) for a in (A, B))),),
                         probe=ProbeSettings(enabled=False), path=str(tmp_path / "cfg.yaml"), load=policy)
    control, clock = FakeControl(), Clock()
    bal = Balancer(cfg, {"news": FakeIdentity()}, control, EffortProtocol(), FakeProber(), clock=clock,
                   monotonic=clock)
    return bal, control, clock


def desc(address, rev, keys, effort=None):
    msg = content(address, 100, rev, keys)
    return type(msg)(address=msg.address, hsdir=msg.hsdir, descriptor_id=None,
                     text=msg.text.rstrip("\n") + (f" 4000000000 effort={effort}\n" if effort is not None else "\n"))


def instance_status(bal, address):
    return next(i for i in bal.status()["frontends"][0]["instances"] if i["address"] == address)


def test_an_instance_suggesting_effort_gets_fewer_intro_points_until_it_has_recovered(tmp_path):
    bal, control, clock = make(tmp_path)
    bal.tick()
    bal.handle(desc(A, 1, ["a1", "a2", "a3"], effort=0))
    bal.handle(desc(B, 1, ["b1", "b2", "b3"], effort=0))
    clock.t += 60  # past the start-up hold
    bal.tick()
    assert {k for _, _, keys in posted_keys(control) for k in keys} == {"a1", "a2", "a3", "b1", "b2", "b3"}
    confirm_all(bal, control)
    n = len(control.posts)
    # A's tor suggests effort 120 in its next descriptor: A keeps one intro point
    bal.handle(desc(A, 2, ["a1", "a2", "a3"], effort=120))
    bal.tick()
    new = posted_keys(control)[n:]
    assert new and all(set(keys) == {"a1", "b1", "b2", "b3"} for _, _, keys in new)
    st = instance_status(bal, A)["load"]
    assert st["pow_effort"] == 120 and st["intro_points_allowed"] == 1
    assert st["why"] == "overloaded (suggested PoW effort 120 >= 10): 1 of 3 intro points"
    assert instance_status(bal, B)["load"]["why"] is None
    confirm_all(bal, control)
    # calm again: not at once (no flapping), but after recover_seconds
    bal.handle(desc(A, 3, ["a1", "a2", "a3"], effort=0))
    clock.t += 100
    n = len(control.posts)
    bal.tick()
    # (an upload still owed to an HSDir of both periods goes out, with A still reduced)
    assert all(set(keys) == {"a1", "b1", "b2", "b3"} for _, _, keys in posted_keys(control)[n:])
    assert instance_status(bal, A)["load"]["why"].startswith("recovering: calm for 0 of 300 s")
    n = len(control.posts)
    clock.t += 301
    bal.tick()
    new = posted_keys(control)[n:]
    assert new and all(set(keys) == {"a1", "a2", "a3", "b1", "b2", "b3"} for _, _, keys in new)
    assert instance_status(bal, A)["load"]["why"] is None


def test_onion_status_text_says_why_an_instance_has_fewer_intro_points(tmp_path):
    from onion.status import format_status

    bal, control, clock = make(tmp_path)
    bal.tick()
    bal.handle(desc(A, 1, ["a1", "a2", "a3"], effort=0))
    bal.handle(desc(B, 1, ["b1", "b2", "b3"], effort=35))
    clock.t += 60
    bal.tick()
    text = format_status(bal.status(), now=clock())
    a_line, b_line = (next(i for i, line in enumerate(text.splitlines()) if f"{x}.onion" in line) for x in (A, B))
    lines = text.splitlines()
    assert lines[b_line + 1].strip() == ("load: overloaded (suggested PoW effort 35 >= 10): 1 of 3 intro points  "
                                         "(suggested PoW effort 35, PoW queue -)")
    assert not lines[a_line + 1].strip().startswith("load:")  # a calm instance adds no line


class MetricsServer:
    """tor's MetricsPort, as far as the balancer reads it: /metrics on 127.0.0.1."""

    def __init__(self, page: str):
        self.page = page
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = server.page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def close(self):
        self.httpd.shutdown()


def metrics_page(queue_a: int, queue_b: int = 0) -> str:
    """The lines tor 0.4.8+ writes (hs_metrics.c: label onion = the 56-char address)."""
    return (f'# HELP tor_hs_rdv_pow_pqueue_count Number of requests waiting in the proof of work priority queue\n'
            f'# TYPE tor_hs_rdv_pow_pqueue_count gauge\n'
            f'tor_hs_rdv_pow_pqueue_count{{onion="{A}"}} {queue_a}\n'
            f'tor_hs_rdv_pow_pqueue_count{{onion="{B}"}} {queue_b}\n'
            f'tor_hs_pow_suggested_effort{{onion="{A}"}} 0\n')


def wait_for_reading(bal, clock, address, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bal.step(timeout=0.2)
        inst = bal.instances[address]
        if inst.load.queue_at is not None or inst.load.metrics_error:
            return inst.load
    raise AssertionError("no MetricsPort reading arrived")


def test_a_deep_pow_queue_on_the_metrics_port_gives_fewer_slots(tmp_path):
    server = MetricsServer(metrics_page(queue_a=120))
    try:
        bal, control, clock = make(tmp_path, metrics={A: server.url})
        bal.tick()
        bal.handle(desc(A, 1, ["a1", "a2", "a3"]))
        bal.handle(desc(B, 1, ["b1", "b2", "b3"]))
        load = wait_for_reading(bal, clock, A)
        assert (load.queue, load.metrics_error) == (120, "")
        clock.t += 60
        bal.tick()
        assert all(set(keys) == {"a1", "b1", "b2", "b3"} for _, _, keys in posted_keys(control))
        st = instance_status(bal, A)["load"]
        assert st["pow_queue"] == 120 and st["why"].startswith("overloaded (PoW queue 120 >= 50)")
        # B has no metrics URL: never read
        assert bal.instances[B].load.queue is None
    finally:
        server.close()


def test_an_unreadable_metrics_port_is_reported_and_changes_nothing(tmp_path):
    bal, control, clock = make(tmp_path, metrics={A: "http://127.0.0.1:9/metrics"})
    bal.tick()
    bal.handle(desc(A, 1, ["a1", "a2", "a3"]))
    bal.handle(desc(B, 1, ["b1", "b2", "b3"]))
    load = wait_for_reading(bal, clock, A)
    assert load.metrics_error and load.queue is None
    clock.t += 60
    bal.tick()
    assert all(len(keys) == 6 for _, _, keys in posted_keys(control))
    assert instance_status(bal, A)["load"]["metrics_error"]


# ---------------------------------------------------------------- formats and config
def test_suggested_effort_from_a_real_descriptors_pow_params():
    """Our decoder keeps an instance's pow-params line (tests/test_pow_invariant.py builds
    one as tor does); the effort is its third field."""
    from tests.test_pow_invariant import instance_descriptor
    from onion.keys import IdentityKey

    got = instance_descriptor(IdentityKey.generate(), effort=48)
    assert suggested_effort(got.extra_lines) == 48
    assert suggested_effort(["flow-control 1-2 31"]) is None


def test_queue_depth_reads_only_the_instances_own_service():
    page = metrics_page(queue_a=7, queue_b=99)
    assert queue_depth(page, A) == 7 and queue_depth(page, B) == 99
    assert queue_depth(page, "c" * 56) is None
    assert queue_depth("garbage\n{}{}\n", A) is None


def test_load_config_and_metrics_urls(tmp_path):
    from tests.test_schema_balancer import key_file

    from onion.keys import IdentityKey

    key = key_file(tmp_path, "news")
    address = IdentityKey.generate().hostname

    def cfg(text):
        path = tmp_path / "b.yaml"
        path.write_text(text)
        return load_config(str(path))

    ok = cfg(f"""frontends:
  - name: news
    key_file: {key}
    instances:
      - address: {address}
        metrics: http://10.42.8.5:9035
load: {{effort_threshold: 20, queue_threshold: 100, recover_seconds: 60}}
""")
    assert ok.frontends[0].instances[0].metrics == "http://10.42.8.5:9035/metrics"
    assert (ok.load.effort_threshold, ok.load.queue_threshold, ok.load.recover_seconds) == (20, 100, 60.0)
    with pytest.raises(ConfigError, match=r"frontends\[0\]\.instances\[0\]\.metrics: must be the instance tor's MetricsPort URL"):
        cfg(f"frontends: [{{name: news, key_file: {key}, instances: [{{address: {address}, metrics: 'https://x:1'}}]}}]\n")
    with pytest.raises(ConfigError, match=r"load\.overloaded_share: must be at most 20"):
        cfg(f"frontends: [{{name: news, key_file: {key}, instances: [{address}]}}]\nload: {{overloaded_share: 21}}\n")
    assert cfg(f"frontends: [{{name: news, key_file: {key}, instances: [{address}]}}]\nload: false\n").load.enabled is False
