"""`onion ship-metrics`: the balancer's metrics to CloudWatch, per the shipping rules in
onion.metric_names (every shipped metric every interval, gauges folded over the labels that
are not dimensions, counters as the increase since the last shipment).

It reads the core's own `/metrics` on loopback (Prometheus text, parsed with
prometheus_client's parser), so it ships exactly what Prometheus would scrape; when the
core does not answer it ships nothing, and the stack's alarms (missing data = breaching)
go off: a silent balancer is an alarm.

Why a shipper of our own and not the CloudWatch agent or Prometheus (docs/operations.md
"Metrics on AWS"): the agent is not in Ubuntu's archive (an Amazon download with its own
signing key to pin), and its Prometheus mode sends embedded-metric-format logs to
CloudWatch Logs, which needs logs permissions the balancer's role does not have (it may
only PutMetricData into its namespace); Ubuntu's Prometheus has no CloudWatch writer.
This is ~200 lines beside the core, shares its names module, and runs as its own unit and
user with no access to the keys.

AWS's request signing (Signature Version 4) and the instance role's credentials (IMDSv2)
are written here by hand, with the standard library: the balancer installs only the onion
package's small lock, and botocore would add ~80 MB of code beside the master keys.
tests/test_cloudwatch.py checks the signature byte for byte against botocore's signer.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterable

from onion import metric_names as mn

log = logging.getLogger("onion.cloudwatch")

IMDS = "http://169.254.169.254"
BATCH = 20   # datums per PutMetricData call (well under CloudWatch's limit)


# ----------------------------------------------------------------------------- folding

def datums(text: str, previous: dict, now: float) -> tuple[list[dict], dict]:
    """CloudWatch datums from one scrape (Prometheus text), and the counter totals to keep
    for the next call. `previous`: what the last call returned (empty at first: counters
    then ship 0, their increase is unknown)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    out: list[dict] = []
    totals: dict = {}
    for metric in mn.SHIPPED:
        cw = metric.cloudwatch
        groups: dict[tuple, list[float]] = {}
        for labels, value in samples.get(metric.name, []):
            if any(labels.get(k) != v for k, v in cw.only):
                continue
            dims = tuple((d, _dimension(d, labels.get(label, ""))) for d, label in cw.dimensions)
            if any(not v for _, v in dims):
                continue
            groups.setdefault(dims, []).append(value)
        for dims, values in sorted(groups.items()):
            if metric.counter:
                total = sum(values)
                key = (metric.name, dims)
                totals[key] = total
                before = previous.get(key)
                value = 0.0 if before is None else (total - before if total >= before else total)
            else:
                value = {"max": max, "min": min, "sum": sum}[cw.fold](values)
            out.append({"MetricName": metric.name, "Dimensions": [{"Name": n, "Value": v} for n, v in dims],
                        "Value": float(value), "Unit": cw.unit, "Timestamp": now})
    return out, totals


def _dimension(name: str, value: str) -> str:
    return mn.frontend_dimension(value) if name == mn.FRONTEND_DIMENSION and value else value


def query_body(namespace: str, data: list[dict]) -> str:
    """The form body of a PutMetricData call (CloudWatch's query API)."""
    params = [("Action", "PutMetricData"), ("Version", "2010-08-01"), ("Namespace", namespace)]
    for i, d in enumerate(data, 1):
        p = f"MetricData.member.{i}."
        params += [(p + "MetricName", d["MetricName"]), (p + "Value", repr(float(d["Value"]))),
                   (p + "Unit", d["Unit"]),
                   (p + "Timestamp", dt.datetime.fromtimestamp(d["Timestamp"], dt.timezone.utc)
                    .strftime("%Y-%m-%dT%H:%M:%SZ"))]
        for j, dim in enumerate(d["Dimensions"], 1):
            params += [(f"{p}Dimensions.member.{j}.Name", dim["Name"]),
                       (f"{p}Dimensions.member.{j}.Value", dim["Value"])]
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


# ----------------------------------------------------------------------------- SigV4

@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires: float | None = None  # unix time


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(method: str, url: str, headers: dict[str, str], body: bytes, creds: Credentials, region: str,
         service: str, when: dt.datetime) -> dict[str, str]:
    """AWS Signature Version 4 (docs.aws.amazon.com/general/latest/gr/sigv4-signing): the
    headers to send, Authorization included. Canonical request over every header given
    (lower-cased, trimmed, sorted), the path as is and the query sorted."""
    parts = urllib.parse.urlsplit(url)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = when.strftime("%Y%m%d")
    out = dict(headers)
    out["Host"] = parts.netloc
    out["X-Amz-Date"] = amz_date
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    canon = {k.lower().strip(): " ".join(str(v).split()) for k, v in out.items()}
    signed = ";".join(sorted(canon))
    query = "&".join(sorted(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    request = "\n".join([method, urllib.parse.quote(parts.path or "/", safe="/-_.~"), query,
                         "".join(f"{k}:{canon[k]}\n" for k in sorted(canon)), signed,
                         hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{creds.secret_key}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out


def instance_credentials(endpoint: str = IMDS, timeout: float = 5.0) -> Credentials:
    """The instance role's temporary credentials from IMDSv2 (a session token first)."""
    req = urllib.request.Request(f"{endpoint}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        token = resp.read().decode()
    head = {"X-aws-ec2-metadata-token": token}
    base = f"{endpoint}/latest/meta-data/iam/security-credentials/"
    with urllib.request.urlopen(urllib.request.Request(base, headers=head), timeout=timeout) as resp:
        role = resp.read().decode().split()[0]
    with urllib.request.urlopen(urllib.request.Request(base + role, headers=head), timeout=timeout) as resp:
        data = json.loads(resp.read())
    expires = dt.datetime.strptime(data["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.timezone.utc).timestamp()
    return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"), expires)


# ----------------------------------------------------------------------------- the loop

class Shipper:
    def __init__(self, metrics_url: str, namespace: str, region: str, *, endpoint: str | None = None,
                 credentials: Callable[[], Credentials] = instance_credentials,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0):
        self.metrics_url, self.namespace, self.region = metrics_url, namespace, region
        self.endpoint = endpoint or f"https://monitoring.{region}.amazonaws.com/"
        self._credentials = credentials
        self._creds: Credentials | None = None
        self.clock = clock
        self.timeout = timeout
        self.previous: dict = {}
        self.last_error = ""

    def creds(self) -> Credentials:
        if self._creds is None or (self._creds.expires is not None and self._creds.expires - self.clock() < 300):
            self._creds = self._credentials()
        return self._creds

    def ship_once(self) -> int:
        """Scrape, fold, put. Returns the number of datums put; raises on failure."""
        with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
        now = self.clock()
        data, self.previous = datums(text, self.previous, now)
        for i in range(0, len(data), BATCH):
            self._put(data[i:i + BATCH], now)
        return len(data)

    def _put(self, batch: list[dict], now: float) -> None:
        body = query_body(self.namespace, batch).encode()
        headers = sign("POST", self.endpoint, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                       body, self.creds(), self.region, "monitoring",
                       dt.datetime.fromtimestamp(now, dt.timezone.utc))
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={k: v for k, v in headers.items() if k != "Host"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code in (400, 403) and "Expired" in detail:
                self._creds = None
            raise RuntimeError(f"PutMetricData: HTTP {exc.code}: {detail}") from None

    def run_forever(self, interval: float = mn.SHIP_INTERVAL_SECONDS, stop: Callable[[], bool] = lambda: False) -> None:
        next_at = time.monotonic()
        while not stop():
            try:
                n = self.ship_once()
                if self.last_error:
                    log.warning("shipping works again (%d metrics)", n)
                self.last_error = ""
            except Exception as exc:  # noqa: BLE001 - log, wait, try again: never exit
                why = f"{type(exc).__name__}: {exc}"
                if why != self.last_error:
                    log.error("cannot ship metrics: %s (missing data: the alarms will say so)", why)
                self.last_error = why
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def shipped_names() -> Iterable[str]:
    return (m.name for m in mn.SHIPPED)
