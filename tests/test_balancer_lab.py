"""The balancer core on the lab's private Tor network: publishes a reachable frontend and
reports what it did (status.json, `python -m onion status|maps`).

Uses the shared lab fixtures (tests/conftest.py); the failover, restart, hostile-input and
rotation scenarios of issue 5 live in the lab's own end-to-end tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.lab


def _status_when(lab, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = lab.balancer_status()
            if predicate(status):
                return status
        except (FileNotFoundError, ValueError):
            status = None
        if time.monotonic() > deadline:
            raise AssertionError(f"status never matched within {timeout:.0f} s: "
                                 f"{json.dumps(status, indent=1)[:3000] if status else status}")
        time.sleep(1)


def _all_confirmed(status) -> bool:
    fe = status["frontends"][0]
    ups = [u for d in fe["descriptors"] for u in d["hsdirs"]]
    return bool(ups) and all(u["state"] == "uploaded" for u in ups)


def _all_in_use(status) -> bool:
    fe = status["frontends"][0]
    return all(i["in_use"] and i["healthy"] for i in fe["instances"]) and _all_confirmed(status)


def test_frontend_reachable_and_every_upload_confirmed(lab, lab_frontend):
    assert lab_frontend < 180
    instances = set(a.removesuffix(".onion") for a in lab.instance_addresses())
    # (other lab tests kill and restart a worker: wait until all four instances are back)
    status = _status_when(lab, _all_in_use, timeout=120)
    assert status["tor"]["connected"] is True and status["publish"] is True
    fe = status["frontends"][0]
    assert fe["address"] + ".onion" == lab.info["frontend"]
    # every instance has a verified descriptor and contributes: 2 workers x 2 tor x 3 intro
    # points = 12 (fits one descriptor), taken round-robin from all four instances
    assert {i["address"] for i in fe["instances"]} == instances
    assert all(i["descriptor"] and len(i["descriptor"]["intro_points"]) == 3 for i in fe["instances"])
    assert all(i["rejected_descriptors"] == 0 for i in fe["instances"])
    published = fe["published_intro_points"]
    assert len(published) == 12 and {p["instance"] for p in published} == instances
    # both descriptors (current and next time period) went to the responsible HSDirs, and
    # tor confirmed each upload (HS_DESC UPLOADED), which is all that counts
    assert len(fe["descriptors"]) == 2
    for desc in fe["descriptors"]:
        assert len(desc["hsdirs"]) >= 4
        assert all(u["result"] == "UPLOADED" and u["intro_points"] == 12 for u in desc["hsdirs"])
    assert fe["next_publish_at"] > time.time()


def test_liveness_probes_pass_for_every_instance(lab, lab_frontend):
    status = _status_when(lab, lambda s: all(i["healthy"] is True for i in s["frontends"][0]["instances"]))
    for inst in status["frontends"][0]["instances"]:
        assert inst["probe"]["consecutive_failures"] == 0 and inst["probe"]["last_result"] == "connected"


def test_status_and_maps_commands(lab, lab_frontend):
    state_dir = lab.info["balancer"]["state_dir"]
    run = subprocess.run([sys.executable, "-m", "onion", "status", "--state-dir", state_dir],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert lab.info["frontend"] in run.stdout and "next planned publish" in run.stdout
    assert "UPLOADED" in run.stdout
    run = subprocess.run([sys.executable, "-m", "onion", "status", "--json", "--state-dir", state_dir],
                         capture_output=True, text=True, timeout=30)
    assert json.loads(run.stdout)["frontends"][0]["address"] + ".onion" == lab.info["frontend"]
    run = subprocess.run([sys.executable, "-m", "onion", "maps", "--config", lab.info["balancer"]["config"]],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("\n")[:-1]
    assert sorted(line.split()[2] for line in lines) == sorted(
        a.removesuffix(".onion") + ".onion" for a in lab.instance_addresses())
    assert all(line.split()[1] == lab.info["frontend"] for line in lines)
