"""Scale-in against the real balancer core on the private Tor network (the lab): the drain
step's delete command waits until the balancer, re-rendered without a worker, has put
descriptors without that worker's introduction points on every responsible HSDir.

Its own balancer (own frontend key, own tor) over the shared lab workers, so the other lab
tests' balancer is untouched; the lab's "current balancer" record is restored afterwards.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes.scripts import drain_script

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
TAG = "drainbal"


def _wait_status(lab, record: dict, predicate, timeout: float, what: str) -> dict:
    from onion.status import read_status

    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = read_status(record["state_dir"])
        except (FileNotFoundError, ValueError):
            status = None
        if status is not None and predicate(status):
            return status
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s; last status: {status}")


def _all_uploaded(status: dict) -> bool:
    ups = [u for fe in status["frontends"] for d in fe.get("descriptors", []) for u in d.get("hsdirs", [])]
    return bool(ups) and all(u.get("state") == "uploaded" for u in ups)


def _published_from(status: dict) -> set[str]:
    return {ip["instance"] for fe in status["frontends"] for ip in fe["published_intro_points"]}


def _drain(record: dict, addresses: list[str], wait: int) -> tuple[subprocess.CompletedProcess, float]:
    script = drain_script(addresses, wait=wait, poll=2, config=record["config"], python=sys.executable,
                          state_dir=record["state_dir"], package_lib=str(REPO))
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=wait + 60)
    return proc, time.monotonic() - started


def test_drain_waits_for_the_real_balancer_to_publish_without_the_removed_worker(lab, lab_workers, tmp_path):
    from onion.keys import IdentityKey

    previous = lab.info.get("balancer")
    key_file = IdentityKey.generate().write_hs_dir(tmp_path / "frontend") / "hs_ed25519_secret_key"
    keep, gone = lab_workers[0].instance_addresses, lab_workers[1].instance_addresses
    try:
        # Before: the balancer publishes both workers' intro points on every HSDir.
        record = lab.start_balancer("onion", TAG, key_file=key_file, instances=keep + gone)
        _wait_status(lab, record, lambda s: _all_uploaded(s) and set(gone) & _published_from(s),
                     480, "descriptors with both workers' intro points on every HSDir")

        # The drain before the balancer was re-rendered: the config still names the worker
        # (a whole-stack destroy): it does not wait.
        proc, took = _drain(record, gone, wait=60)
        assert proc.returncode == 0 and "still lists" in proc.stdout and took < 10, proc.stderr

        # Scale-in: balancer-core re-renders without worker 2 and restarts the core...
        lab.procs.stop(TAG)
        time.sleep(1.1)  # the new config's mtime is after any status the old process wrote
        record = lab.start_balancer("onion", TAG, key_file=key_file, instances=keep)
        # ...then the drain (worker 2's delete) waits until the balancer has published
        # without worker 2's intro points everywhere, and returns.
        proc, took = _drain(record, gone, wait=300)
        assert proc.returncode == 0, proc.stderr
        assert "publishes without" in proc.stdout and "WARNING" not in proc.stderr, (proc.stdout, proc.stderr)
        status = _wait_status(lab, record, lambda s: True, 5, "a status")
        assert not set(gone) & _published_from(status) and _published_from(status) <= set(keep)
        print(f"[measure] drain after scale-in: {took:.1f} s")
    finally:
        lab.procs.stop(TAG)
        if previous is not None:
            lab.info["balancer"] = previous
        else:
            lab.info.pop("balancer", None)
        lab.info.get("balancers", {}).pop(TAG, None)
        lab.save()
