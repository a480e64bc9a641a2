"""The lab's app site (`python -m lab up --app`): the sample guestbook (apps/guestbook) on
every lab worker against a real PostgreSQL on 127.0.0.1, behind the workers' nginx and
tor instances rendered from the same templates as on AWS (app-site.conf: no rewriting,
the circuit id passed as X-Onion-Circuit), published by the balancer core.

No container runtime in the lab: a "build" is a copy of apps/guestbook/guestbook into the
state dir (what the Containerfile COPYs), and each worker runs the module the image's CMD
runs (`python -m guestbook`, as its __main__.py file so that the command line names the
state dir, which the process registry requires) with the environment the podman unit
gives it: PORT, DATABASE_URL (its own role, sslmode=verify-full against the lab
database's CA), PGSSLROOTCERT.

An upgrade (`rolling_upgrade`) does what the stack's AppRollout does: the new build's
migration once, then per worker: the balancer drained of that worker's instances (the
same rendered app-drain script, `python -m onion drained`), the new build started on the
worker's idle port beside the running one (nginx's app-site.conf sends to both ports) and
healthy, the old build stopped (SIGTERM: it finishes its requests), the balancer's config
back (app-undrain), next worker. A drained worker still gets requests from clients that
fetched the descriptor before the drain; the two ports are why none of them fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.database import PostgresCluster
from lab.procs import ProcessRegistry
from lab.services import read_hostname
from lab.workers import _check, prepare_dirs, write_rendered

APP = "guestbook"
SOURCE = Path(__file__).resolve().parent.parent / "apps" / "guestbook" / "guestbook"


@dataclass
class AppWorker:
    index: int
    root: str
    tor_daemons: int
    ports: list[int]  # the app's two loopback ports (app-site.conf's upstream), slot a and b
    instance_addresses: list[str]
    commands: dict[str, list[str]] = field(default_factory=dict)
    build: str = "1"
    slot: int = 0  # which of `ports` the running build listens on

    @property
    def name(self) -> str:
        return f"a{self.index}"

    @property
    def host_port(self) -> int:
        return self.ports[self.slot]

    def app_process(self, slot: int | None = None) -> str:
        return f"{self.name}-app-{'ab'[self.slot if slot is None else slot]}"

    def to_json(self) -> dict:
        return asdict(self)


def build(state_dir: Path, number: str) -> Path:
    """A build of the sample app: its package copied as the image does; returns the module file."""
    dest = Path(state_dir) / "apps" / f"{APP}-build{number}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SOURCE, dest / APP, ignore=shutil.ignore_patterns("__pycache__"))
    return dest / APP / "__main__.py"


def start_database(procs: ProcessRegistry, state_dir: Path, port: int) -> PostgresCluster:
    cluster = PostgresCluster(Path(state_dir) / "database", port, apps=(APP,))
    cluster.prepare()
    procs.start("postgres", cluster.argv())
    cluster.wait_ready()
    cluster.create_roles()
    return cluster


def app_env(cluster: PostgresCluster, host_port: int, build_number: str) -> dict[str, str]:
    return {**os.environ, "PORT": str(host_port), "GUESTBOOK_BIND": "127.0.0.1", "GUESTBOOK_BUILD": build_number,
            "DATABASE_URL": cluster.url(APP), "PGSSLROOTCERT": cluster.ca_file}


def migrate(cluster: PostgresCluster, module: Path, build_number: str) -> None:
    result = subprocess.run([sys.executable, str(module), "migrate"], env=app_env(cluster, 0, build_number),
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"guestbook migrate failed: {result.stderr}")


def wait_healthy(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app on 127.0.0.1:{port} did not become healthy within {timeout:.0f} s")
        time.sleep(0.2)


def start_app(procs: ProcessRegistry, worker: AppWorker, cluster: PostgresCluster, module: Path,
              build_number: str, slot: int = 0) -> None:
    """The build on the worker's port `slot`, healthy; the worker's running build from then on."""
    argv = [sys.executable, str(module), "serve"]
    name = worker.app_process(slot)
    procs.start(name, argv, env=app_env(cluster, worker.ports[slot], build_number))
    wait_healthy(worker.ports[slot])
    worker.commands[name] = argv
    worker.slot, worker.build = slot, build_number


def start_app_worker(procs: ProcessRegistry, state_dir: Path, index: int, *, frontend_address: str,
                     ports: tuple[int, int], network_torrc: str, tor_daemons: int, intro_points: int) -> AppWorker:
    """One worker serving the app site: tor instances + nginx from the AWS templates."""
    from nodes.render import AppSiteSpec, Layout, SiteSpec, render_worker
    from nodes.roles import Machine, worker_spec

    root = Path(state_dir) / "workers" / f"a{index}"
    site = SiteSpec(name=APP, domain=None, onion_address=frontend_address,
                    app=AppSiteSpec(host_port=ports[0], next_port=ports[1]))
    # No MetricsPort: the stack's fixed 127.0.0.1:9101+ would collide between the lab's
    # workers (they share one host); lab/workers.py gives its proxy workers free ports instead.
    machine = Machine(layout=Layout(root=str(root)), tor_user=None, nginx_user=None, tor_include=network_torrc,
                      tor_metrics_base=None)
    spec = worker_spec((site,), resolver="127.0.0.1", tor_daemons=tor_daemons, intro_points=intro_points,
                       machine=machine)
    write_rendered(root, render_worker(spec))
    prepare_dirs(spec)
    nginx_conf = spec.layout.path("etc_dir", "nginx", "nginx.conf")
    nginx_cmd = ["nginx", "-c", nginx_conf, "-e", spec.layout.path("log_dir", "nginx-start.log")]
    _check(nginx_cmd + ["-t", "-q"], "nginx -t")
    torrcs = [spec.layout.path("etc_dir", "tor", f"{d}.torrc") for d in spec.daemon_names]
    for torrc in torrcs:
        _check(["tor", "--verify-config", "-f", torrc], "tor --verify-config")
    worker = AppWorker(index=index, root=str(root), tor_daemons=tor_daemons, ports=list(ports),
                       instance_addresses=[])
    worker.commands[f"{worker.name}-nginx"] = nginx_cmd + ["-g", "daemon off;"]
    for daemon, torrc in zip(spec.daemon_names, torrcs):
        worker.commands[f"{worker.name}-{daemon}"] = ["tor", "-f", torrc]
    for name, argv in worker.commands.items():
        procs.start(name, argv)
    for daemon in spec.daemon_names:
        worker.instance_addresses.append(read_hostname(Path(spec.hs_dir(daemon, site))).removesuffix(".onion"))
    return worker


def _balancer_script(kind: str, addresses: list[str], balancer: dict, pid: int) -> str:
    from nodes.apps import drain_switch_script, undrain_script

    common = dict(config=balancer["config"], state_dir=balancer["state_dir"], python=sys.executable,
                  package_lib=str(Path(__file__).resolve().parent.parent), reload=f"kill -HUP {pid}", poll=2)
    return (drain_switch_script(addresses, wait=300, **common) if kind == "drain"
            else undrain_script(addresses, wait=300, **common))


def run_balancer_script(kind: str, addresses: list[str], balancer: dict, pid: int) -> str:
    """The rendered app-drain / app-undrain script, run here as the step runs it there."""
    result = subprocess.run(["bash", "-c", _balancer_script(kind, addresses, balancer, pid)],
                            capture_output=True, text=True, timeout=400)
    if result.returncode != 0:
        raise RuntimeError(f"app {kind} failed: {result.stdout}{result.stderr}")
    return (result.stdout + result.stderr).strip()


def rolling_upgrade(procs: ProcessRegistry, workers: list[AppWorker], cluster: PostgresCluster, balancer: dict,
                    state_dir: Path, build_number: str, progress=print) -> list[dict]:
    """Migrate once with the new build, then switch the workers one at a time, each
    drained from the balancer first. Returns one record per worker (times, messages)."""
    module = build(state_dir, build_number)
    migrate(cluster, module, build_number)
    progress(f"app upgrade: build {build_number} migrated")
    pid = procs.pid(balancer["process"])
    records = []
    for worker in workers:
        t0 = time.time()
        drained = run_balancer_script("drain", worker.instance_addresses, balancer, pid)
        t1 = time.time()
        old = worker.app_process()
        start_app(procs, worker, cluster, module, build_number, slot=1 - worker.slot)
        procs.stop(old, timeout=40)  # SIGTERM: the old build finishes its requests (podman stop --time 30)
        worker.commands.pop(old, None)
        t2 = time.time()
        undrained = run_balancer_script("undrain", worker.instance_addresses, balancer, pid)
        t3 = time.time()
        records.append({"worker": worker.name, "drain_s": round(t1 - t0, 1), "switch_s": round(t2 - t1, 1),
                        "undrain_s": round(t3 - t2, 1), "drain": drained, "undrain": undrained})
        progress(f"app upgrade: worker {worker.name} on build {build_number} (drain {t1 - t0:.0f} s, "
                 f"switch {t2 - t1:.1f} s, back in rotation {t3 - t2:.0f} s)")
    return records


__all__ = ["APP", "AppWorker", "build", "migrate", "rolling_upgrade", "run_balancer_script", "start_app",
           "start_app_worker", "start_database", "wait_healthy"]
