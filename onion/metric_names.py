"""The one definition of the balancer's metrics: Prometheus names, types, labels and help,
and which of them go to CloudWatch (dimensions, units, how labels are folded).

Everything that names a metric reads it from here: the exporter (`onion/metrics.py`, at
`/metrics`), the CloudWatch shipper (`onion/cloudwatch.py`), the stack's alarms
(`infra/metrics.py` re-exports the CloudWatch part, `infra/alarms.py` watches it), the
Prometheus alert rules and the Grafana dashboard under `monitoring/` (tests check every
metric name they use against `ALL`). Plain Python, no dependencies: `onion` is installed
alone on the balancer, and `infra/` may import `onion`, not the other way round.

Names: Onionprobe's (`onion_service_*`, with its `name` and `address` labels) where the
meaning is the same, seen from the balancer's own tor; `onion_balancer_*` for the rest.
`address` is always the frontend's onion address with `.onion`, lower case.

CloudWatch shipping rules (docs/operations.md "Metrics on AWS"):
  - every shipped metric every `SHIP_INTERVAL_SECONDS`, also when nothing changed: the
    alarms treat missing data as breaching, so a silent balancer is an alarm, not an
    all-clear;
  - gauges as their current value, folded over the Prometheus labels that are not kept as
    dimensions with the metric's `fold` (max, min or sum) after `only` (label filters);
    counters (`*_total`) as the increase since the previous shipment, summed over the
    labels not kept (0 when nothing happened);
  - `frontend` = the `address` label as `frontend_dimension()` spells it; `worker` = the
    worker's node name (`worker-1`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE_PREFIX = "Onionstack"
SHIP_INTERVAL_SECONDS = 60

# Prometheus label names
NAME = "name"          # the frontend's name in the balancer config (the site's name)
ADDRESS = "address"    # the frontend's onion address, "<56 chars>.onion"
INSTANCE = "instance"  # an instance's onion address, "<56 chars>.onion"
INSTANCE_NAME = "instance_name"  # its name from the config ("" when it has none)
WORKER = "worker"      # the worker the instance runs on (config `worker:`; "" when unknown)
ROLE = "role"          # "current" / "next": tor's first / second descriptor
HSDIR = "hsdir"        # an HSDir's fingerprint (40 hex)
DESCRIPTOR = "descriptor"  # which of the distinct descriptors (0, 1, ...) of a time period
REASON = "reason"      # why an instance descriptor was rejected (REJECT_REASONS)
PROTOCOL, PORT, PATH = "protocol", "port", "path"  # Onionprobe's endpoint labels

FRONTEND_LABELS = (NAME, ADDRESS)
INSTANCE_LABELS = (NAME, ADDRESS, INSTANCE, INSTANCE_NAME, WORKER)
ENDPOINT_LABELS = (NAME, ADDRESS, PROTOCOL, PORT, PATH)

# CloudWatch dimension names
FRONTEND_DIMENSION = "frontend"
WORKER_DIMENSION = "worker"

# Why an instance descriptor was refused: a bounded set, so a hostile instance cannot
# mint label values (onion/instances.py maps every refusal to one of these).
REJECT_REASONS = ("oversized", "malformed", "bad_signature", "expired", "wrong_key",
                  "replayed", "no_intro_points", "too_many_intro_points", "bad_intro_point",
                  "undecodable")


def namespace(stack: str) -> str:
    """The CloudWatch namespace of one stack: `Onionstack/<stack>` (the balancer's instance
    role may put metrics in this namespace only)."""
    return f"{NAMESPACE_PREFIX}/{stack}"


def frontend_dimension(onion_address: str) -> str:
    """The `frontend` dimension value (and the `address` label): the onion address, lower
    case, with `.onion`."""
    address = onion_address.strip().lower()
    return address if address.endswith(".onion") else f"{address}.onion"


@dataclass(frozen=True)
class CloudWatch:
    """How a metric is shipped: dimension name -> the Prometheus label it takes its value
    from; `fold` over the other labels (gauges); `only`: label filters applied first."""
    dimensions: tuple[tuple[str, str], ...]
    unit: str  # a CloudWatch unit
    fold: str = "max"  # max | min | sum (counters are always summed)
    only: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "gauge" | "counter" (the name then ends in _total)
    labels: tuple[str, ...]
    help: str
    cloudwatch: CloudWatch | None = field(default=None, compare=False)

    @property
    def counter(self) -> bool:
        return self.kind == "counter"

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.cloudwatch.dimensions) if self.cloudwatch else ()

    @property
    def unit(self) -> str:
        return self.cloudwatch.unit if self.cloudwatch else "None"


_FRONTEND_CW = ((FRONTEND_DIMENSION, ADDRESS),)

# ---- Onionprobe's names, the same meaning, measured through the balancer's own tor
SERVICE_REACHABLE = Metric(
    "onion_service_reachable", "gauge", ENDPOINT_LABELS,
    "1 when the balancer's last end-to-end probe of the frontend (its own tor, fresh "
    "circuits, an HTTP request to the site's port) got an HTTP answer, 0 when it failed",
    CloudWatch(_FRONTEND_CW, "None", fold="max"))
SERVICE_LATENCY = Metric(
    "onion_service_latency_seconds", "gauge", ENDPOINT_LABELS,
    "seconds the last successful end-to-end probe of the frontend took (SOCKS connect, "
    "rendezvous and the HTTP answer's first line)")
DESCRIPTOR_REACHABLE = Metric(
    "onion_service_descriptor_reachable", "gauge", FRONTEND_LABELS,
    "1 when the last read-back got the frontend's current-period descriptor from at least "
    "one responsible HSDir, 0 when none served it")
INTRODUCTION_POINTS = Metric(
    "onion_service_introduction_points_number", "gauge", FRONTEND_LABELS,
    "introduction points in the frontend's current-period descriptors as the HSDirs serve "
    "them (read-back; all distinct descriptors together)")

# ---- the balancer's own
INSTANCES_UP = Metric(
    "onion_balancer_instances_up", "gauge", FRONTEND_LABELS,
    "instances of the frontend whose descriptors are valid and whose probes pass",
    CloudWatch(_FRONTEND_CW, "Count", fold="min"))
INSTANCE_UP = Metric(
    "onion_balancer_instance_up", "gauge", INSTANCE_LABELS,
    "1 when the instance has a valid descriptor and passes its probes, else 0 (one series "
    "per configured instance: count() is the configured number)")
WORKER_INSTANCES_UP = Metric(
    "onion_balancer_worker_instances_up", "gauge", (WORKER,),
    "instances served by one worker (its tor daemons, all frontends) whose probes pass; "
    "below tor daemons x sites means one of its tors is down",
    CloudWatch(((WORKER_DIMENSION, WORKER),), "Count", fold="min"))
PROBE_SUCCESS = Metric(
    "onion_balancer_probe_success", "gauge", INSTANCE_LABELS,
    "1 when the instance's last liveness probe (SOCKS connect through the balancer's tor) "
    "succeeded, 0 when it failed; absent until it was probed")
PROBE_LATENCY = Metric(
    "onion_balancer_probe_latency_seconds", "gauge", INSTANCE_LABELS,
    "seconds the instance's last liveness probe took")
INSTANCE_POW_QUEUE = Metric(
    "onion_balancer_instance_pow_queue", "gauge", INSTANCE_LABELS,
    "the instance's PoW queue depth as its own tor reports it (tor_hs_rdv_pow_pqueue_count "
    "on the worker's MetricsPort, read every load.metrics_interval); absent without a reading")
INSTANCE_POW_EFFORT = Metric(
    "onion_balancer_instance_pow_effort", "gauge", INSTANCE_LABELS,
    "the suggested PoW effort in the instance's current descriptor (0 without pow-params)")
INSTANCE_INTRO_POINTS_ALLOWED = Metric(
    "onion_balancer_instance_intro_points_allowed", "gauge", INSTANCE_LABELS,
    "introduction points the instance may have in each descriptor while load-aware "
    "selection holds it back (overloaded or recovering); absent when it has its full share")
DESCRIPTOR_INTRO_POINTS = Metric(
    "onion_balancer_descriptor_intro_points", "gauge", (NAME, ADDRESS, ROLE, DESCRIPTOR),
    "introduction points in each distinct descriptor the balancer built for a time period")
UPLOAD_CONFIRMED = Metric(
    "onion_balancer_hsdir_upload_confirmed", "gauge", (NAME, ADDRESS, ROLE, HSDIR),
    "1 when the responsible HSDir confirmed (tor's UPLOADED) the last upload of the "
    "frontend's descriptor for that time period, 0 otherwise")
HSDIR_SERVING = Metric(
    "onion_balancer_hsdir_serving", "gauge", (NAME, ADDRESS, ROLE, HSDIR),
    "1 when the last read-back from the responsible HSDir returned the revision (and "
    "intro points) the balancer uploaded to it, 0 when it served another, none or failed; "
    "absent until read back")
HSDIRS_SERVING = Metric(
    "onion_balancer_hsdirs_serving", "gauge", (NAME, ADDRESS, ROLE),
    "responsible HSDirs of the time period whose last read-back returned the revision the "
    "balancer uploaded (only the period clients fetch now is read back: role current, or "
    "next between a period's start and the next shared random value)",
    # No role filter: the role of the period read back alternates twice a day.
    CloudWatch(_FRONTEND_CW, "Count", fold="min"))
SECONDS_SINCE_CONFIRMED_UPLOAD = Metric(
    "onion_balancer_seconds_since_confirmed_upload", "gauge", (NAME, ADDRESS, ROLE),
    "seconds since an HSDir last confirmed an upload of the frontend's descriptor for the "
    "time period (tor's UPLOADED event); while none has, seconds since the balancer first "
    "had to publish it",
    CloudWatch(_FRONTEND_CW, "Seconds", fold="max"))
REJECTED_DESCRIPTORS = Metric(
    "onion_balancer_rejected_descriptors_total", "counter", INSTANCE_LABELS + (REASON,),
    "instance descriptors the balancer rejected, by reason (" + ", ".join(REJECT_REASONS) + ")",
    CloudWatch(_FRONTEND_CW, "Count"))
RING_HSDIRS = Metric(
    "onion_balancer_hash_ring_hsdirs", "gauge", (),
    "HSDirs in the hash ring the balancer computes responsible HSDirs from")
PUBLISHING = Metric(
    "onion_balancer_publishing", "gauge", FRONTEND_LABELS,
    "1 when this balancer uploads the frontend's descriptors (a primary, or a standby that "
    "took over), 0 for a standby standing by or `publish: false`")

ALL: tuple[Metric, ...] = (
    SERVICE_REACHABLE, SERVICE_LATENCY, DESCRIPTOR_REACHABLE, INTRODUCTION_POINTS,
    INSTANCES_UP, INSTANCE_UP, WORKER_INSTANCES_UP, PROBE_SUCCESS, PROBE_LATENCY,
    INSTANCE_POW_QUEUE, INSTANCE_POW_EFFORT, INSTANCE_INTRO_POINTS_ALLOWED,
    DESCRIPTOR_INTRO_POINTS, UPLOAD_CONFIRMED, HSDIR_SERVING, HSDIRS_SERVING,
    SECONDS_SINCE_CONFIRMED_UPLOAD, REJECTED_DESCRIPTORS, RING_HSDIRS, PUBLISHING,
)
BY_NAME = {m.name: m for m in ALL}

# What goes to CloudWatch (and what the stack's alarms may watch).
SHIPPED: tuple[Metric, ...] = tuple(m for m in ALL if m.cloudwatch is not None)
