"""What the operations work puts on the machines, checked by the real tools: the tors'
MetricsPorts (tor --verify-config), the metrics shipper's unit (systemd-analyze), the
balancer config with metrics, workers and standby (the core's own loader)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodes import render
from nodes.render import BalancerSpec, Layout, SiteSpec, WorkerSpec
from tests.conftest_tools import TOR, onion_address_for, run, short_tmpdir, write_tree

SITES = (SiteSpec("news", "example.com", onion_address_for("ops-news")),)
I1, I2, I3 = onion_address_for("ops-i1"), onion_address_for("ops-i2"), onion_address_for("ops-i3")
INSTANCES = {"news": (I1, I2, I3)}


def test_balancer_tor_metricsport_is_loopback_only_and_verifies():
    root = short_tmpdir()
    spec = BalancerSpec(sites=SITES, instances=INSTANCES, layout=Layout(root=str(root)),
                        cookie_file=str(root / "control.authcookie"))
    files = render.render_balancer(spec)
    write_tree(root, files)
    torrc = files["etc/onionstack/tor/balancer.torrc"].content
    assert "MetricsPort 127.0.0.1:9052\nMetricsPortPolicy accept 127.0.0.1\nMetricsPortPolicy reject *\n" in torrc
    Path(spec.data_dir).mkdir(parents=True, mode=0o700)
    result = run([TOR, "--verify-config", "-f", str(root / "etc/onionstack/tor/balancer.torrc")])
    assert result.returncode == 0, result.stdout
    # and tor refuses a MetricsPort open to others, so the check is live
    bad = root / "bad.torrc"
    bad.write_text(torrc.replace("MetricsPortPolicy accept 127.0.0.1", "MetricsPortPolicy accept 0.0.0.0/0")
                   .replace("MetricsPort 127.0.0.1:9052", "MetricsPort 127.0.0.1:notaport"))
    assert run([TOR, "--verify-config", "-f", str(bad)]).returncode != 0


def test_aws_worker_tors_each_get_a_loopback_metricsport_that_verifies():
    from lab.workers import prepare_dirs
    from nodes.roles import AWS, Machine, worker_spec

    spec = worker_spec(SITES, resolver="10.42.0.2", tor_daemons=3, intro_points=3, machine=AWS)
    assert spec.metrics_ports == (9101, 9102, 9103)
    root = short_tmpdir()
    local = worker_spec(SITES, resolver="10.42.0.2", tor_daemons=3, intro_points=3,
                        machine=Machine(layout=Layout(root=str(root)), tor_user=None, nginx_user=None))
    files = render.render_worker(local)
    write_tree(root, files)
    prepare_dirs(local)
    for i, daemon in enumerate(local.daemon_names):
        torrc = files[f"etc/onionstack/tor/{daemon}.torrc"].content
        assert f"MetricsPort 127.0.0.1:{9101 + i}\nMetricsPortPolicy accept 127.0.0.1\n" in torrc
        result = run([TOR, "--verify-config", "-f", str(root / f"etc/onionstack/tor/{daemon}.torrc")])
        assert result.returncode == 0, result.stdout
    # the lab picks its own ports (several workers share its machine)
    from lab.workers import worker_spec as lab_spec

    assert lab_spec(root, frontend_address=SITES[0].onion_address, domain="example.com", origin_port=8443,
                    ca_file="/etc/ssl/certs/ca-certificates.crt", network_torrc="/dev/null", tor_daemons=2,
                    intro_points=3).metrics_ports == ()


def test_metrics_shipper_unit_passes_systemd_analyze(tmp_path):
    venv = str(Path(sys.executable).parent.parent)
    spec = BalancerSpec(sites=SITES, instances=INSTANCES, venv=venv, cloudwatch=("Onionstack/prod", "eu-central-1"))
    files = render.render_balancer(spec)
    unit = files["etc/systemd/system/onion-metrics-shipper.service"].content
    assert ("ExecStart=" + venv + "/bin/python -m onion ship-metrics --metrics-url http://127.0.0.1:9961/metrics "
            "--namespace Onionstack/prod --region eu-central-1\n") in unit
    assert "DynamicUser=yes\n" in unit  # no access to the keys or tor's control socket
    (tmp_path / "onion-metrics-shipper.service").write_text(unit)
    (tmp_path / "onion-balancer.service").write_text(files["etc/systemd/system/onion-balancer.service"].content)
    (tmp_path / "onionstack-tor@.service").write_text(files["etc/systemd/system/onionstack-tor@.service"].content)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "onion-metrics-shipper.service")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    problems = [line for line in result.stderr.splitlines() if "onion" in line]
    assert result.returncode == 0 and not problems, result.stderr
    apply = files["usr/local/lib/onionstack/apply.sh"].content
    assert "systemctl enable onion-metrics-shipper.service" in apply
    # without a region (no AWS) no shipper is rendered, and apply.sh turns an old one off
    plain = render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES))
    assert "etc/systemd/system/onion-metrics-shipper.service" not in plain
    assert "systemctl disable --now onion-metrics-shipper.service" in plain["usr/local/lib/onionstack/apply.sh"].content
    with pytest.raises(render.RenderError, match="cloudwatch"):
        BalancerSpec(sites=SITES, instances=INSTANCES, cloudwatch=("Onionstack/prod", "eu central; rm -rf /"))


@pytest.mark.parametrize("standby", [False, True])
def test_balancer_config_with_metrics_workers_and_standby_loads_in_the_core(standby):
    from onion.config import load_config
    from onion.keys import IdentityKey

    root = short_tmpdir()
    key = IdentityKey.generate()
    sites = (SiteSpec("news", "example.com", key.address),)
    spec = BalancerSpec(sites=sites, instances=INSTANCES, layout=Layout(root=str(root)), standby=standby,
                        workers={I1: "worker-1", I2: "worker-1", I3 + ".onion": "worker-2"})
    files = render.render_balancer(spec)
    write_tree(root, files)
    key_file = Path(spec.key_file("news"))
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(key.to_tor_secret_key())
    os.chmod(key_file, 0o600)
    cfg = load_config(str(root / "etc/onionstack/balancer.yaml"))
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9961)
    assert [i.worker for i in cfg.frontends[0].instances] == ["worker-1", "worker-1", "worker-2"]
    assert cfg.standby.enabled is standby
