"""The metrics contract between the balancer and the cloud, as the stack sees it: the
CloudWatch namespace, the shipped metric names, their dimensions and units, which the
stack's alarms watch (infra/alarms.py).

The one definition lives in `onion.metric_names` (the balancer exports and ships exactly
those names; `onion` is installed alone on the balancer and may not import `infra`). This
module re-exports its CloudWatch part under the names the alarms use, so both sides read
one definition and cannot drift. Shipping rules: `onion.metric_names`' docstring and
docs/operations.md "Metrics on AWS".
"""
from __future__ import annotations

from onion.metric_names import (  # noqa: F401 - re-exported
    FRONTEND_DIMENSION as FRONTEND,
    INSTANCES_UP,
    HSDIRS_SERVING,
    Metric,
    NAMESPACE_PREFIX,
    REJECTED_DESCRIPTORS,
    SECONDS_SINCE_CONFIRMED_UPLOAD,
    SERVICE_REACHABLE,
    SHIP_INTERVAL_SECONDS,
    SHIPPED,
    WORKER_DIMENSION as WORKER,
    WORKER_INSTANCES_UP,
    frontend_dimension,
    namespace,
)

# The metrics shipped to CloudWatch, each watched by an alarm (tests/test_alarms.py).
METRICS: tuple[Metric, ...] = SHIPPED
