"""The metrics contract between the balancer and the cloud: the CloudWatch namespace, the
metric names, their dimensions and units, which the stack's alarms watch (infra/alarms.py)
and whatever ships the balancer's metrics to CloudWatch must publish.

The names are the Prometheus names the balancer exports at `/metrics` (Onionprobe's
`onion_service_*` where the meaning is the same, `onion_balancer_*` for the rest); the
CloudWatch dimensions are the Prometheus labels kept. Plain Python without Pulumi: the
node templates (an agent's configuration) import it too, so the two sides cannot drift.

Shipping rules (docs/operations.md "Metrics on AWS"):
  - every metric every `SHIP_INTERVAL_SECONDS`, also when nothing changed: the alarms
    treat missing data as breaching, so a silent balancer is an alarm, not an all-clear;
  - gauges as their current value; counters (`*_total`) as the increase since the
    previous shipment, summed over the Prometheus labels not kept as dimensions (0 when
    nothing happened);
  - `frontend` = the site's onion address as `frontend_dimension()` spells it; `worker` =
    the worker's node name (`worker-1`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

NAMESPACE_PREFIX = "Onionstack"
SHIP_INTERVAL_SECONDS = 60

# Dimension names.
FRONTEND = "frontend"
WORKER = "worker"


def namespace(stack: str) -> str:
    """The CloudWatch namespace of one stack: `Onionstack/<stack>` (the balancer's instance
    role may put metrics in this namespace only)."""
    return f"{NAMESPACE_PREFIX}/{stack}"


def frontend_dimension(onion_address: str) -> str:
    """The `frontend` dimension value: the onion address, lower case, with `.onion`."""
    address = onion_address.strip().lower()
    return address if address.endswith(".onion") else f"{address}.onion"


@dataclass(frozen=True)
class Metric:
    name: str  # the Prometheus name, used unchanged as the CloudWatch metric name
    dimensions: tuple[str, ...]
    unit: str  # a CloudWatch unit
    counter: bool  # shipped as the increase per interval
    help: str


SERVICE_REACHABLE = Metric(
    "onion_service_reachable", (FRONTEND,), "None", False,
    "1 when the balancer's last end-to-end probe of the frontend (its own tor, a fresh "
    "circuit, HTTP to the site's port) succeeded, 0 when it failed",
)
SECONDS_SINCE_CONFIRMED_UPLOAD = Metric(
    "onion_balancer_seconds_since_confirmed_upload", (FRONTEND,), "Seconds", False,
    "seconds since an HSDir last confirmed an upload of the frontend's descriptor "
    "(tor's UPLOADED event), for the current time period",
)
HSDIRS_SERVING = Metric(
    "onion_balancer_hsdirs_serving", (FRONTEND,), "Count", False,
    "responsible HSDirs of the current time period whose read-back returned the revision "
    "the balancer uploaded",
)
INSTANCES_UP = Metric(
    "onion_balancer_instances_up", (FRONTEND,), "Count", False,
    "instances of the frontend whose descriptors are valid and whose probes pass",
)
WORKER_INSTANCES_UP = Metric(
    "onion_balancer_worker_instances_up", (WORKER,), "Count", False,
    "instances served by one worker (its tor daemons, all frontends) whose probes pass; "
    "below tor daemons x sites means one of its tors is down",
)
REJECTED_DESCRIPTORS = Metric(
    "onion_balancer_rejected_descriptors_total", (FRONTEND,), "Count", True,
    "instance descriptors the balancer rejected (bad signature, expired, replayed, "
    "oversized, ...), all reasons together",
)

METRICS: tuple[Metric, ...] = (
    SERVICE_REACHABLE,
    SECONDS_SINCE_CONFIRMED_UPLOAD,
    HSDIRS_SERVING,
    INSTANCES_UP,
    WORKER_INSTANCES_UP,
    REJECTED_DESCRIPTORS,
)
