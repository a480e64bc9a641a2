"""The app sites' remote steps: migrations, then a rolling switch of the workers.

    AppRollout  apps
      app-<site>-migrate        on worker 1, once per image (or migration) change, before any
                                worker switches: the new image runs the migration command
      worker-N-app-drain        on the balancer: the worker's app-site instances out of the
                                balancer's config; wait until published without them
      worker-N-apps             on worker N: the database CA, the app units (podman, image by
                                digest), their environment files (secret stdin); restart,
                                wait for each health path
      worker-N-app-undrain      on the balancer: the balancer's own config back; wait until the
                                worker's instances are published again

Order: every migration -> worker-1 drain -> worker-1 apps -> worker-1 undrain -> worker-2
drain -> ... Each command's triggers are the release (images, units, environment digest),
so an image change replaces (re-runs) all of them in that order, one worker at a time, and
a second `pulumi up` with the same config runs nothing. A worker whose app does not become
healthy fails its step: it stays out of the rotation, the workers after it keep the old
release, and readers keep being served by them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

from infra.config import Site
from nodes.apps import (AppHostSpec, AppRelease, app_secret_files, database_url, drain_switch_script,
                        migrate_script, render_app_host, undrain_script, APP_SCRIPT_DIR)
from nodes.balancer import BalancerNode
from nodes.payload import digest, payload
from nodes.remote import command, connection
from nodes.render import content_hash
from nodes.roles import BALANCER_CONFIG, BALANCER_STATE_DIR, PACKAGE_LIB, VENV_PYTHON, app_host_ports
from nodes.scripts import as_root, runner_script
from nodes.worker import WorkerNode

BALANCER_RELOAD = "systemctl reload onion-balancer.service"
DATABASE_PORT = 5432


def releases(sites: Sequence[Site], ecr_urls: dict) -> list[AppRelease]:
    """The app sites as workers run them; `ecr_urls`: site -> repository URL (resolved)."""
    ports = app_host_ports(sites)
    out = []
    for s in sites:
        if not s.is_app:
            continue
        image = f"{ecr_urls[s.name]}@{s.app.image}" if s.app.ecr else s.app.image
        registry = ecr_urls[s.name].split("/", 1)[0] if s.app.ecr else None
        out.append(AppRelease(site=s.name, image=image, port=s.app.port, host_port=ports[s.name],
                              health_path=s.app.health_path, env=s.app.env, migrate=s.app.migrate,
                              registry=registry))
    return out


@dataclass(frozen=True)
class AppRolloutArgs:
    sites: tuple[Site, ...]
    workers: tuple[WorkerNode, ...]
    setups: tuple  # WorkerSetup per worker: their instance addresses (per site)
    balancer: BalancerNode
    core: pulumi.Resource  # BalancerCore: the switch changes the config it installed
    database: pulumi.Resource  # DatabaseSetup: the roles exist before any app connects
    database_ip: pulumi.Input[str]
    ca_pem: pulumi.Input[str]
    passwords: dict  # app site -> secret password
    ecr_urls: dict  # app site -> repository URL Output (ECR apps only)
    ssh_key: pulumi.Input[str]


class AppRollout(pulumi.ComponentResource):
    """Declares `release_digest` (changes with images, units, environment) and the commands."""

    release_digest: pulumi.Output
    migrations: list
    drains: list
    switches: list
    undrains: list

    def __init__(self, name: str, args: AppRolloutArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:nodes:AppRollout", name, None, opts)
        sites = args.sites
        app_names = [s.name for s in sites if s.is_app]
        urls = pulumi.Output.all(**args.ecr_urls) if args.ecr_urls else pulumi.Output.from_input({})
        spec = pulumi.Output.all(urls, args.ca_pem).apply(
            lambda a: AppHostSpec(apps=tuple(releases(sites, a[0])), ca_pem=a[1]))
        public = spec.apply(render_app_host)
        self.release_digest = public.apply(content_hash)
        passwords = pulumi.Output.all(**args.passwords)
        secret_env = pulumi.Output.secret(pulumi.Output.all(spec, passwords, args.database_ip).apply(
            lambda a: app_secret_files(a[0], {s: database_url(s, a[1][s], a[2], DATABASE_PORT, a[0].ca_file)
                                             for s in app_names})))
        # The environment's digest (it holds the passwords) is not a trigger; the environment
        # without DATABASE_URL is part of the units' digest via the config (env is public).
        stdin = pulumi.Output.secret(pulumi.Output.all(public, secret_env).apply(
            lambda a: payload({**a[0], **a[1]})))

        # ---- migrations, once per image change, on worker 1, after the database's roles
        first, first_setup = args.workers[0], args.setups[0]
        self.migrations = []
        for site in (s for s in sites if s.is_app and s.app.migrate):
            release = spec.apply(lambda sp, n=site.name: next(a for a in sp.apps if a.site == n))
            script = release.apply(lambda r: as_root(migrate_script(r, auth_file=(
                "/etc/onionstack/apps/registries.json" if r.registry else None))))
            files = pulumi.Output.secret(pulumi.Output.all(public, secret_env).apply(
                lambda a, n=site.name: payload({k: v for k, v in {**a[0], **a[1]}.items()
                                                if k.endswith(f"apps/{n}.env") or k.endswith("database-ca.pem")
                                                or k.endswith("registries.json")
                                                or k == f"{APP_SCRIPT_DIR}/install-packages.sh"})))
            self.migrations.append(command(
                f"app-{site.name}-migrate", connection=connection(first.ssh, args.ssh_key), create=script,
                stdin=files, secret=True,
                triggers=[release.apply(lambda r: r.image), digest(*site.app.migrate)],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*first.ready, first_setup, args.database])))

        # ---- one worker at a time: drain, switch, undrain
        self.drains, self.switches, self.undrains = [], [], []
        previous: list = [args.core, *self.migrations, args.database]
        balancer_conn = connection(args.balancer.ssh, args.ssh_key)
        for worker, setup in zip(args.workers, args.setups):
            n = worker.node_name
            addresses = setup.instance_addresses.apply(
                lambda per_site: sorted(a for s in app_names for a in (per_site or {}).get(s, [])))
            common = dict(config=BALANCER_CONFIG, state_dir=BALANCER_STATE_DIR, python=VENV_PYTHON,
                          package_lib=PACKAGE_LIB, reload=BALANCER_RELOAD)
            drain = command(
                f"{n}-app-drain", connection=balancer_conn,
                create=addresses.apply(lambda a: as_root(drain_switch_script(a, **common))),
                triggers=[self.release_digest, worker.instance.id],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.balancer.instance, *previous]))
            script = runner_script(APP_SCRIPT_DIR)
            switch = command(
                f"{n}-apps", connection=connection(worker.ssh, args.ssh_key), create=as_root(script),
                stdin=stdin, secret=True,
                triggers=[worker.instance.id, self.release_digest, digest(script)],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*worker.ready, setup, drain]))
            undrain = command(
                f"{n}-app-undrain", connection=balancer_conn,
                create=addresses.apply(lambda a: as_root(undrain_script(a, **common))),
                triggers=[self.release_digest, worker.instance.id],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[switch]))
            self.drains.append(drain)
            self.switches.append(switch)
            self.undrains.append(undrain)
            previous = [undrain]
        self.register_outputs({"releaseDigest": self.release_digest})


__all__ = ["AppRollout", "AppRolloutArgs", "releases"]
