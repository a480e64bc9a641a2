"""Session-scoped lab fixtures: ONE private Tor network shared by every lab test.

Tests that need it are marked `lab`. The network is torn down at the end of the session,
also on failure or Ctrl-C; every daemon also dies with pytest if pytest itself is killed
(see lab/procs.py).
"""
from __future__ import annotations

import pytest

LAB_VOTING_INTERVAL = 10  # s; a time period is 24 x this = 240 s (issue 5 test f)


@pytest.fixture(scope="session")
def lab(request, tmp_path_factory):
    """A running lab: the private network (client bootstrapped) and the origin."""
    from lab.stack import Lab

    the_lab = Lab.create(tmp_path_factory.mktemp("lab"), tie_to_parent=True,
                         voting_interval=LAB_VOTING_INTERVAL, progress=_progress)
    try:
        the_lab.start_network()
        the_lab.start_origin(listeners=2)
        yield the_lab
    finally:
        the_lab.down()
        if request.session.testsfailed:
            _print_balancer_logs(the_lab)


def _print_balancer_logs(the_lab, lines: int = 40) -> None:
    """pytest prunes old tmp dirs: show every balancer's last words in the failing run."""
    for name in sorted({"balancer", *(the_lab.info.get("balancers") or {})}):
        log = the_lab.procs.log_path(name)
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"\n[lab] last {len(tail)} lines of {log}:\n" + "\n".join(tail))


def _progress(line: str) -> None:
    print(f"[lab] {line}", flush=True)


@pytest.fixture(scope="session")
def lab_workers(lab):
    """Two workers (2 tor instances each, from the AWS worker templates) for one frontend
    key, on the shared network. Their instance services publish on their own."""
    lab.make_frontend_key()
    return lab.start_workers(2, tor_daemons=2, intro_points=3)


@pytest.fixture(scope="session")
def lab_frontend(lab, lab_workers):
    """onionstack's balancer core publishing the frontend; returns seconds until the
    frontend first answered through the client."""
    lab.start_balancer("onion")
    return lab.wait_frontend(timeout=180)


@pytest.fixture(scope="session")
def lab_control(lab):
    """URL of a plain onion service on the same network: probes of it tell network or
    machine trouble (a slow CI host) apart from balancer faults."""
    from lab.client import wait_reachable

    url = f"http://{lab.start_control_service()}/"
    wait_reachable(lab.net.client.socks_port, url, timeout=120, what="control service")
    return url
