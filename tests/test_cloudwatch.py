"""The CloudWatch shipper (`onion ship-metrics`): its hand-written SigV4 against botocore's
signer, byte for byte; a whole shipment over real HTTP from a real /metrics to a capturing
endpoint with IMDSv2 credentials from a local stand-in; the folding rules of
onion.metric_names; nothing shipped when the core is silent."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
import urllib.parse
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from onion import metric_names as mn
from onion.cloudwatch import Credentials, Shipper, datums, instance_credentials, query_body, sign
from onion.metrics import MetricsServer
from onion.probe import ProbeResult
from tests.test_balancer_core import A, B, FRONT, make, start_with_descriptors

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session//token+=", 4e9)
WHEN = dt.datetime(2026, 12, 6, 5, 30, 0, tzinfo=dt.timezone.utc)


def botocore_signature(method, url, headers, body, creds, region, service, when):
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    auth = SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), service, region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        auth.add_auth(req)
    return req.headers["Authorization"]


@pytest.mark.parametrize("url", ["https://monitoring.eu-central-1.amazonaws.com/",
                                 "http://127.0.0.1:8080/some/path?b=2&a=1%202&c=x~y"])
def test_sigv4_matches_botocore_byte_for_byte(url):
    body = query_body("Onionstack/prod", [{"MetricName": "onion_service_reachable", "Value": 1.0, "Unit": "None",
                                           "Timestamp": WHEN.timestamp(),
                                           "Dimensions": [{"Name": "frontend", "Value": f"{FRONT}.onion"}]}]).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    ours = sign("POST", url, headers, body, CREDS, "eu-central-1", "monitoring", WHEN)["Authorization"]
    theirs = botocore_signature("POST", url, headers, body, CREDS, "eu-central-1", "monitoring", WHEN)
    assert ours == theirs
    # a different secret gives a different signature (the comparison is live)
    other = sign("POST", url, headers, body, Credentials("AKIDEXAMPLE", "x", CREDS.token), "eu-central-1",
                 "monitoring", WHEN)["Authorization"]
    assert other != theirs


def test_folding_follows_the_shipping_rules():
    text = f"""# TYPE onion_balancer_hsdirs_serving gauge
onion_balancer_hsdirs_serving{{name="news",address="{FRONT}.onion",role="current"}} 6
onion_balancer_hsdirs_serving{{name="news",address="{FRONT}.onion",role="next"}} 2
# TYPE onion_balancer_seconds_since_confirmed_upload gauge
onion_balancer_seconds_since_confirmed_upload{{name="news",address="{FRONT}.onion",role="current"}} 30
onion_balancer_seconds_since_confirmed_upload{{name="news",address="{FRONT}.onion",role="next"}} 900
# TYPE onion_balancer_rejected_descriptors_total counter
onion_balancer_rejected_descriptors_total{{name="news",address="{FRONT}.onion",instance="a",instance_name="",worker="",reason="expired"}} 2
onion_balancer_rejected_descriptors_total{{name="news",address="{FRONT}.onion",instance="b",instance_name="",worker="",reason="malformed"}} 1
# TYPE onion_balancer_worker_instances_up gauge
onion_balancer_worker_instances_up{{worker="worker-1"}} 2
"""
    first, totals = datums(text, {}, 100.0)
    by = {(d["MetricName"], tuple((x["Name"], x["Value"]) for x in d["Dimensions"])): d for d in first}
    front = (("frontend", f"{FRONT}.onion"),)
    assert by[("onion_balancer_hsdirs_serving", front)]["Value"] == 2        # the fewest
    assert by[("onion_balancer_seconds_since_confirmed_upload", front)]["Value"] == 900  # the worst period
    assert by[("onion_balancer_rejected_descriptors_total", front)]["Value"] == 0  # increase unknown yet
    assert by[("onion_balancer_worker_instances_up", (("worker", "worker-1"),))]["Unit"] == "Count"
    later, _ = datums(text.replace('reason="malformed"}} 1'.replace("}}", "}"), 'reason="malformed"} 6'),
                      totals, 160.0)
    assert [d["Value"] for d in later if d["MetricName"] == "onion_balancer_rejected_descriptors_total"] == [5]


def test_hsdirs_serving_is_shipped_whichever_role_the_period_read_back_has():
    """Read-back covers the period clients fetch now; between a time period's start and the
    next shared random value that is the "next" one (half of every day). A role filter
    shipped nothing then, and the hsdirs-not-serving alarm (missing data = breaching) fired."""
    text = f"""# TYPE onion_balancer_hsdirs_serving gauge
onion_balancer_hsdirs_serving{{name="news",address="{FRONT}.onion",role="next"}} 8
"""
    shipped, _ = datums(text, {}, 100.0)
    assert [(d["MetricName"], d["Value"]) for d in shipped] == [("onion_balancer_hsdirs_serving", 8.0)]


class Capture(http.server.BaseHTTPRequestHandler):
    requests: list = []
    imds_token = "imds-token-123"

    def log_message(self, *args):
        pass

    def do_PUT(self):  # IMDSv2 token
        assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        self._send(self.imds_token.encode())

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != self.imds_token:
            self.send_response(401)
            self.end_headers()
            return
        if self.path.endswith("/security-credentials/"):
            self._send(b"balancer-metrics-role")
        else:
            self._send(json.dumps({"AccessKeyId": CREDS.access_key, "SecretAccessKey": CREDS.secret_key,
                                   "Token": CREDS.token, "Expiration": "2099-01-01T00:00:00Z"}).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, dict(self.headers), body))
        self._send(b"<PutMetricDataResponse/>")

    def _send(self, data: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def capture():
    Capture.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_shipment_from_the_cores_metrics_to_cloudwatch(tmp_path, capture):
    bal, control, proto, prober, clock = make(tmp_path)
    server = MetricsServer("127.0.0.1", free_port(), clock=clock, monotonic=clock)
    bal.metrics = server
    try:
        start_with_descriptors(bal, control)
        bal.handle(ProbeResult(A, True, "connected", 1.0))
        bal.handle(ProbeResult(B, True, "connected", 1.0))
        clock.t += 2
        bal.tick()
        creds = instance_credentials(capture)
        assert creds.access_key == CREDS.access_key and creds.expires > 4e9
        shipper = Shipper(server.describe(), "Onionstack/test", "eu-central-1", endpoint=f"{capture}/",
                          credentials=lambda: instance_credentials(capture), clock=lambda: WHEN.timestamp())
        n = shipper.ship_once()
    finally:
        server.close()
    assert n >= 3 and len(Capture.requests) == 1
    path, headers, body = Capture.requests[0]
    form = dict(urllib.parse.parse_qsl(body.decode()))
    assert (form["Action"], form["Version"], form["Namespace"]) == ("PutMetricData", "2010-08-01", "Onionstack/test")
    names = {v for k, v in form.items() if k.endswith(".MetricName")}
    assert names <= {m.name for m in mn.SHIPPED}
    assert {"onion_balancer_instances_up", "onion_balancer_rejected_descriptors_total"} <= names
    i = next(k.split(".")[2] for k, v in form.items() if v == "onion_balancer_instances_up")
    assert form[f"MetricData.member.{i}.Value"] == "2.0"
    assert form[f"MetricData.member.{i}.Dimensions.member.1.Name"] == "frontend"
    assert form[f"MetricData.member.{i}.Dimensions.member.1.Value"] == f"{FRONT}.onion"
    assert headers["X-Amz-Security-Token"] == CREDS.token
    expect = botocore_signature("POST", f"{capture}/", {"Content-Type": headers["Content-Type"]}, body, CREDS,
                                "eu-central-1", "monitoring", WHEN)
    assert headers["Authorization"] == expect


def test_a_silent_core_ships_nothing_and_the_shipper_keeps_running(capture, caplog):
    shipper = Shipper(f"http://127.0.0.1:{free_port()}/metrics", "Onionstack/test", "eu-central-1",
                      endpoint=f"{capture}/", credentials=lambda: CREDS)
    with pytest.raises(OSError):
        shipper.ship_once()
    calls = iter([False, False, True])
    with mock.patch("onion.cloudwatch.time.sleep"):
        shipper.run_forever(interval=0.01, stop=lambda: next(calls))
    assert Capture.requests == []
    assert sum("cannot ship metrics" in r.message for r in caplog.records) == 1  # said once
