"""Balancer and database templates, systemd units and the role scripts, checked by the real
tools: tor, the balancer core's own config loader, PostgreSQL, systemd-analyze, shellcheck,
and apply.sh itself run against a scratch root (install, idempotence, rollback)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes import render
from nodes.render import (BalancerSpec, DatabaseSpec, DatabaseTls, Layout, RenderError, SiteSpec, WorkerSpec,
                          database_volumes)
from lab.database import PostgresCluster, make_pki, pg_bin
from tests.conftest_tools import (SHELLCHECK, TOR, TestCA, free_port, onion_address_for, run,
                                  short_tmpdir, write_tree)

pytestmark = pytest.mark.tools

SITES = (SiteSpec("news", "example.com", onion_address_for("roles-news")),
         SiteSpec("shop", "shop.example.org", onion_address_for("roles-shop")))
INSTANCES = {"news": (onion_address_for("i1"), onion_address_for("i2") + ".onion"),
             "shop": (onion_address_for("i3"),)}
VOLUMES = database_volumes(("vol-0123456789abcdef0", "/dev/sdf"), ("vol-0123456789abcdef1", "/dev/sdg"),
                           ("vol-0123456789abcdef2", "/dev/sdh"))
DB_TLS = make_pki("10.42.1.10").tls  # the CA and certificate nodes/pki.py would make for that IP


def all_roles(root: str = "/") -> dict[str, dict]:
    layout = Layout(root=root)
    return {
        "worker": render.render_worker(WorkerSpec(sites=SITES, resolver="10.42.0.2", layout=layout)),
        "balancer": render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES, layout=layout)),
        "standby": render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES, publish=False,
                                                       layout=layout)),
        "database": render.render_database(DatabaseSpec("10.42.1.10", ("10.42.128.0/20",), VOLUMES,
                                                        layout=layout, tls=DB_TLS, apps=("guestbook",))),
    }


# ------------------------------------------------------------------ shellcheck + systemd

@pytest.mark.parametrize("role", ["worker", "balancer", "standby", "database"])
def test_every_rendered_shell_script_is_shellcheck_clean(role, tmp_path):
    files = all_roles()[role]
    scripts = sorted(k for k in files if k.endswith(".sh"))
    assert scripts == ["usr/local/lib/onionstack/apply.sh", "usr/local/lib/onionstack/install-packages.sh"]
    write_tree(tmp_path, files)
    for rel in scripts:
        assert files[rel].content.startswith("#!/usr/bin/env bash\n") and files[rel].mode == 0o755
        result = run([SHELLCHECK, "--severity=style", "--shell=bash", str(tmp_path / rel)])
        assert result.returncode == 0, f"{rel}:\n{result.stdout}"


def test_shellcheck_would_catch_a_bad_script(tmp_path):
    """The check above is live: shellcheck flags the classic unquoted-variable mistake."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/x\n")
    assert run([SHELLCHECK, str(bad)]).returncode != 0


def test_systemd_units_pass_systemd_analyze(tmp_path):
    roles = all_roles()
    units = dict(roles["worker"])
    # the balancer core's unit names its venv python: point it at one that exists here
    venv = str(Path(sys.executable).parent.parent)
    units.update(render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES, venv=venv)))
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    names = []
    for rel, f in units.items():
        if rel.startswith("etc/systemd/system/"):
            (unit_dir / Path(rel).name).write_text(f.content)
            names.append(Path(rel).name.replace("@.service", "@tor1.service"))
    assert sorted(names) == ["nginx-onionstack.service", "onion-balancer.service", "onionstack-tor@tor1.service"]
    shutil.copy(unit_dir / "onionstack-tor@.service", unit_dir / "onionstack-tor@tor1.service")
    # SYSTEMD_UNIT_PATH: the balancer core's unit requires onionstack-tor@balancer (the template)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(unit_dir / n) for n in names]],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"})
    problems = [line for line in result.stderr.splitlines() if "onionstack" in line or "onion-balancer" in line]
    assert result.returncode == 0 and not problems, result.stderr
    tor_unit = (unit_dir / "onionstack-tor@tor1.service").read_text()
    for line in ("User=debian-tor", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n",
                 "ExecStartPre=/usr/bin/tor --verify-config -f /etc/onionstack/tor/%i.torrc",
                 "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target"):
        assert line in tor_unit
    # `systemctl reload onion-balancer` sends SIGHUP, which the core takes as "re-read the config"
    balancer_unit = (unit_dir / "onion-balancer.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in balancer_unit


# ------------------------------------------------------------------ balancer

def test_balancer_torrc_verifies_and_binds_loopback_only(tmp_path):
    root = short_tmpdir()
    spec = BalancerSpec(sites=SITES, instances=INSTANCES, layout=Layout(root=str(root)),
                        cookie_file=str(root / "control.authcookie"))
    files = render.render_balancer(spec)
    write_tree(root, files)
    torrc = files["etc/onionstack/tor/balancer.torrc"].content
    # ExtendedErrors: a failed liveness probe names the onion-service step that failed
    assert "SocksPort 127.0.0.1:9050 ExtendedErrors\n" in torrc and "ControlPort" not in torrc
    assert "ControlSocket /run/onionstack-tor-balancer/control\n" in torrc
    assert "CookieAuthentication 1\n" in torrc and "HiddenService" not in torrc
    # consensus fetched as early as a directory cache does (srv-window investigation)
    assert "FetchDirInfoEarly 1\n" in torrc and "FetchDirInfoExtraEarly 1\n" in torrc
    Path(spec.data_dir).mkdir(parents=True, mode=0o700)
    result = run([TOR, "--verify-config", "-f", str(root / "etc/onionstack/tor/balancer.torrc")])
    assert result.returncode == 0, result.stdout


def test_lab_balancer_tor_gets_the_same_consensus_timing_lines():
    """The lab's balancer tor takes its timing options from the template the AWS torrc
    includes; the OnionBalance baseline keeps tor's defaults."""
    from lab.balancer import balancer_tor_lines

    torrc = render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES,
                                                layout=Layout(root="/"))
                                   )["etc/onionstack/tor/balancer.torrc"].content
    lines = balancer_tor_lines("onion")
    assert lines == ["FetchDirInfoEarly 1", "FetchDirInfoExtraEarly 1"]
    assert all(line + "\n" in torrc for line in lines)
    assert balancer_tor_lines("onionbalance") == []


@pytest.mark.parametrize("publish", [True, False])
def test_balancer_config_loads_in_the_real_core(publish):
    """The rendered YAML is read by onion.config.load_config, keys and all."""
    from onion.config import load_config
    from onion.keys import IdentityKey

    root = short_tmpdir()
    keys = {s.name: IdentityKey.generate() for s in SITES}
    sites = tuple(SiteSpec(s.name, s.domain, keys[s.name].address) for s in SITES)
    spec = BalancerSpec(sites=sites, instances=INSTANCES, publish=publish, layout=Layout(root=str(root)))
    files = render.render_balancer(spec)
    write_tree(root, files)
    for site in sites:  # what the remote step stages: tor's key file, 0600
        hs_dir = keys[site.name].write_hs_dir(root / "hs" / site.name)
        key_path = Path(spec.key_file(site))
        key_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(hs_dir) / "hs_ed25519_secret_key", key_path)
        key_path.chmod(0o600)
    cfg = load_config(spec.config_file)
    assert cfg.publish is publish
    assert cfg.socks_port == 9050 and cfg.control.socket == "/run/onionstack-tor-balancer/control"
    assert cfg.state_dir == spec.state_dir
    assert [f.name for f in cfg.frontends] == ["news", "shop"]
    got = {f.name: [i.address for i in f.instances] for f in cfg.frontends}
    assert got == {"news": [onion_address_for("i1"), onion_address_for("i2")], "shop": [onion_address_for("i3")]}
    assert files["etc/onionstack/balancer.yaml"].mode == 0o640
    assert files["etc/onionstack/balancer.yaml"].owner == "onionbalancer"


def test_balancer_validation():
    with pytest.raises(RenderError, match=r"^instances\[shop\]"):
        BalancerSpec(sites=SITES, instances={"news": INSTANCES["news"]})
    with pytest.raises(RenderError, match=r"^instances: \['blog'\]"):
        BalancerSpec(sites=SITES, instances={**INSTANCES, "blog": INSTANCES["shop"]})
    with pytest.raises(RenderError, match=r"^instances\[news\]: 'nope.onion'"):
        BalancerSpec(sites=SITES, instances={**INSTANCES, "news": ("nope.onion",)})
    spec = BalancerSpec(sites=SITES, instances=INSTANCES)
    assert spec.key_file("news") == "/var/lib/onion-balancer/keys/news.key"
    apply = render.render_balancer(spec)["usr/local/lib/onionstack/apply.sh"].content
    # the secret key files are expected in the stage and installed 0600 for the core's user
    assert "install_file var/lib/onion-balancer/keys/news.key 600 onionbalancer\n" in apply


# ------------------------------------------------------------------ database

def test_database_config_loads_in_real_postgres():
    """A scratch cluster started with the rendered conf.d file (TLS with the rendered
    certificate, CA and the staged key), pg_hba.conf and database-roles.sql: postgres
    accepts all of them, pg_hba_file_rules shows the intended rules and no error, and the
    roles and databases exist with their own passwords."""
    root = short_tmpdir("os-pg-")
    cluster = PostgresCluster(root, free_port(), apps=("guestbook", "forum"),
                              client_cidrs=("10.42.128.0/20", "10.42.144.0/20"))
    cluster.prepare()
    spec = cluster.spec
    check = run(cluster._as_user([str(pg_bin() / "postgres"), "-D", str(cluster.data_dir), "-C",
                                  "password_encryption"]))
    assert check.returncode == 0 and check.stdout.strip() == "scram-sha-256", check.stderr
    server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        cluster.wait_ready()
        cluster.create_roles()
        cluster.create_roles()  # idempotent: a second apply changes nothing and fails nothing

        def sql(query: str) -> str:
            r = cluster.psql("-A", "-t", "-c", query)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        assert sql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
        rules = sql("SELECT type || ' ' || array_to_string(database, ',') || ' ' || array_to_string(user_name, ',')"
                    " || ' ' || coalesce(address, '') || '/' || coalesce(netmask, '') || ' ' || auth_method"
                    " FROM pg_hba_file_rules WHERE type = 'hostssl' ORDER BY line_number")
        assert rules.splitlines() == [
            f"hostssl {db} {db} {net} scram-sha-256"
            for db in ("onionstack", "app_guestbook", "app_forum")
            for net in ("10.42.128.0/255.255.240.0", "10.42.144.0/255.255.240.0")]
        assert sql("SHOW listen_addresses") == "localhost,127.0.0.1"
        assert sql("SHOW ssl") == "on"
        # the rendered certificate, CA and staged key, not the snakeoil pair
        assert sql("SHOW ssl_cert_file") == spec.cert_file and sql("SHOW ssl_key_file") == spec.key_file
        assert sql("SHOW ssl_ca_file") == spec.ca_file
        key = Path(spec.key_file)
        assert (key.stat().st_mode & 0o777, key.owner()) == (0o600, cluster.user)
        # each app role owns its own database, no superuser or other powers
        assert sql("SELECT datname || ' ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE 'app_%' "
                   "ORDER BY 1").splitlines() == ["app_forum app_forum", "app_guestbook app_guestbook"]
        assert sql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app_%' AND NOT rolsuper AND NOT rolcreatedb "
                   "AND NOT rolcreaterole AND rolcanlogin") == "2"
        # a broken pg_hba.conf is reported by the same query apply.sh uses
        hba = Path(spec.conf_dir) / "pg_hba.conf"
        hba.write_text(hba.read_text() + "hostssl all all 10.0.0.0/8 no-such-method\n")
        assert sql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "1"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def files_key(files: dict, suffix: str) -> str:
    return next(k for k in files if k.endswith(suffix))


def test_database_script_never_formats_a_used_volume_and_keeps_password_off_argv():
    files = render.render_database(DatabaseSpec("10.42.1.10", ("10.42.128.0/20",), VOLUMES, tls=DB_TLS,
                                                apps=("guestbook",)))
    apply = files["usr/local/lib/onionstack/apply.sh"].content
    assert 'refusing to format it' in apply and apply.count("mkfs.xfs") == 1
    assert "prepare_volume pgdata vol-0123456789abcdef0 /dev/sdf /var/lib/postgresql 0700 postgres postgres" in apply
    assert "nofail" in apply
    roles = files["usr/local/lib/onionstack/database-roles.sql"].content
    assert "\\set pw `cat /etc/onionstack/postgres/password`" in roles
    assert "\\set pw `cat /etc/onionstack/postgres/apps/guestbook.password`" in roles
    assert "psql -X -q -v ON_ERROR_STOP=1 -p 5432 -d postgres < /usr/local/lib/onionstack/database-roles.sql" in apply
    for secret in ("etc/onionstack/postgres/password", "etc/onionstack/postgres/apps/guestbook.password",
                   "etc/onionstack/postgres/server.key"):
        assert f"install_file {secret} 600 postgres" in apply
        assert secret not in files  # staged by the step, never rendered
    hba = files["etc/postgresql/16/main/pg_hba.conf"].content
    assert "0.0.0.0/0" not in hba and "trust" not in hba and " md5" not in hba
    with pytest.raises(RenderError, match=r"^client_cidrs: '0.0.0.0/0'"):
        DatabaseSpec("10.42.1.10", ("0.0.0.0/0",), VOLUMES, tls=DB_TLS)
    with pytest.raises(RenderError, match=r"^listen_ip: '8.8.8.8'"):
        DatabaseSpec("8.8.8.8", ("10.42.128.0/20",), VOLUMES, tls=DB_TLS)
    with pytest.raises(RenderError, match=r"^tls: None"):
        DatabaseSpec("10.42.1.10", ("10.42.128.0/20",), VOLUMES)
    with pytest.raises(RenderError, match=r"must name the listen_ip 10.42.1.11"):
        DatabaseSpec("10.42.1.11", ("10.42.128.0/20",), VOLUMES, tls=DB_TLS)
    other = make_pki("10.42.1.10")
    with pytest.raises(RenderError, match=r"^tls.cert_pem: .*not issued by the CA"):
        DatabaseTls(cert_pem=DB_TLS.cert_pem, ca_pem=other.ca_pem)


# ------------------------------------------------------------------ apply.sh, for real

def _stage(spec: WorkerSpec, stage: Path) -> dict:
    files = render.render_worker(spec)
    if stage.exists():
        shutil.rmtree(stage)
    write_tree(stage, files)
    return files


def _apply(stage: Path) -> subprocess.CompletedProcess:
    # umask 077 like the remote step's wrapper (nodes/templates/steps/runner.sh.j2): apply.sh must not depend on it
    return run(["bash", "-c", 'umask 077; exec bash "$0" "$1"',
                str(stage / "usr/local/lib/onionstack/apply.sh"), str(stage)], timeout=60)


def test_worker_apply_installs_checks_and_rolls_back():
    """Production users and modes (root runs it, like the remote step), scratch root."""
    root, work = short_tmpdir("os-live-"), short_tmpdir("os-stage-")
    os.chmod(root, 0o755)  # debian-tor runs `tor --verify-config` and must reach the files
    spec = WorkerSpec(sites=SITES, resolver="10.42.0.2", layout=Layout(root=str(root)))
    stage = work / "stage"
    files = _stage(spec, stage)

    first = _apply(stage)
    assert first.returncode == 0, first.stderr
    assert "configuration checked (changed)" in first.stdout
    torrc = root / "etc/onionstack/tor/tor1.torrc"
    assert torrc.read_text() == files["etc/onionstack/tor/tor1.torrc"].content
    ob = root / "var/lib/onionstack/tor/tor2/hs/shop/ob_config"
    assert (ob.stat().st_mode & 0o777, ob.owner()) == (0o600, "debian-tor")
    hs = Path(spec.hs_dir("tor2", SITES[1]))
    assert (hs.stat().st_mode & 0o777, hs.owner()) == (0o700, "debian-tor")
    run_dir = Path(spec.layout.path("run_dir"))
    assert (run_dir.stat().st_mode & 0o777, run_dir.group()) == (0o750, "debian-tor")
    for parent in ("etc", "etc/onionstack", "etc/onionstack/tor", "etc/onionstack/nginx/sites"):
        assert (root / parent).stat().st_mode & 0o777 == 0o755, parent

    again = _apply(stage)
    assert again.returncode == 0 and "configuration checked (unchanged)" in again.stdout

    # tor starts from what apply.sh made, as the unit runs it (debian-tor, no capabilities,
    # no new privileges; DisableNetwork keeps it off any network) and writes the instance
    # hostname files the remote step reports.
    tor = subprocess.Popen(["setpriv", "--reuid=debian-tor", "--regid=debian-tor", "--init-groups",
                            "--bounding-set=-all", "--no-new-privs", TOR, "-f", str(torrc),
                            "--RunAsDaemon", "0", "--DisableNetwork", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        hostnames = [Path(spec.hs_dir("tor1", s)) / "hostname" for s in SITES]
        deadline = time.monotonic() + 30
        while not all(h.exists() for h in hostnames) and time.monotonic() < deadline and tor.poll() is None:
            time.sleep(0.1)
        assert all(h.exists() for h in hostnames), tor.stdout.read().decode() if tor.poll() is not None else "timeout"
        for h in hostnames:
            assert h.owner() == "debian-tor" and len(h.read_text().strip()) == 62
    finally:
        tor.terminate()
        tor.wait(timeout=20)

    # A config tor rejects: the check fails, the old files come back, new ones vanish.
    good_torrc = torrc.read_text()
    bad_spec = WorkerSpec(sites=SITES + (SiteSpec("blog", "blog.example.net", onion_address_for("blog")),),
                          resolver="10.42.0.2", layout=Layout(root=str(root)))
    _stage(bad_spec, stage)
    (stage / "etc/onionstack/tor/tor1.torrc").write_text(
        (stage / "etc/onionstack/tor/tor1.torrc").read_text() + "HiddenServiceNumIntroductionPoints 99\n")
    failed = _apply(stage)
    assert failed.returncode == 1
    assert "failed its check; the previous files are back" in failed.stderr
    assert torrc.read_text() == good_torrc
    assert not (root / "etc/onionstack/nginx/sites/blog.conf").exists()
    assert "blog" not in (root / "etc/onionstack/nginx/nginx.conf").read_text()

    # nginx rejects one too (an unknown directive in a site file): same outcome.
    _stage(spec, stage)
    site = stage / "etc/onionstack/nginx/sites/news.conf"
    site.write_text(site.read_text().replace("server {", "server {\n    no_such_directive on;", 1))
    failed = _apply(stage)
    assert failed.returncode == 1 and "no_such_directive" in failed.stderr
    assert "no_such_directive" not in (root / "etc/onionstack/nginx/sites/news.conf").read_text()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def test_worker_apply_enables_and_reloads_only_after_a_passing_check(tmp_path):
    """The systemd half of apply.sh, with a recording systemctl: units enabled at boot,
    a daemon no longer configured stopped and disabled, nothing at all after a failed check."""
    root, work = short_tmpdir("os-live-"), short_tmpdir("os-stage-")
    os.chmod(root, 0o755)
    bin_dir, marker, log = tmp_path / "bin", tmp_path / "systemd", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    marker.mkdir()
    for tool in ("systemctl", "systemd-tmpfiles"):
        fake = bin_dir / tool
        fake.write_text(f"#!/bin/sh\necho \"{tool} $*\" >> {log}\n"
                        "case \"$*\" in list-units*) echo 'onionstack-tor@tor3.service loaded active running x';; esac\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ONIONSTACK_SYSTEMD_MARKER": str(marker)}
    spec = WorkerSpec(sites=SITES, resolver="10.42.0.2", layout=Layout(root=str(root)))
    stage = work / "stage"
    _stage(spec, stage)

    def apply():
        return subprocess.run(["bash", str(stage / "usr/local/lib/onionstack/apply.sh"), str(stage)],
                              capture_output=True, text=True, timeout=60, env=env)

    first = apply()
    assert first.returncode == 0, first.stderr
    calls = log.read_text().splitlines()
    units = "nginx-onionstack.service onionstack-tor@tor1.service onionstack-tor@tor2.service"
    assert calls[0] == "systemctl daemon-reload"  # new unit files
    assert f"systemctl enable --now {units}" in calls
    assert f"systemd-tmpfiles --create {root}/etc/tmpfiles.d/onionstack.conf" in calls
    assert "systemctl disable --now onionstack-tor@tor3.service" in calls
    assert "systemctl restart nginx-onionstack.service" in calls
    assert calls.index(f"systemctl enable --now {units}") < calls.index("systemctl restart nginx-onionstack.service")

    log.write_text("")
    nginx_site = stage / "etc/onionstack/nginx/sites/news.conf"
    nginx_site.write_text(nginx_site.read_text().replace("burst=40", "burst=41"))
    second = apply()
    assert second.returncode == 0, second.stderr
    calls = log.read_text().splitlines()
    assert "systemctl daemon-reload" not in calls  # no unit file changed: reload, not restart
    assert "systemctl reload-or-restart nginx-onionstack.service" in calls

    log.write_text("")
    nginx_site.write_text(nginx_site.read_text().replace("burst=41", "burst=oops"))
    third = apply()
    assert third.returncode == 1
    assert log.read_text() == "", "a failed check must not touch any service"
    assert "burst=41" in (root / "etc/onionstack/nginx/sites/news.conf").read_text()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def test_install_packages_refuses_a_tor_project_key_with_another_fingerprint(tmp_path):
    """The repository key check is real gpg: a key that is not the pinned one stops the
    script before any apt source is written. Network tools are stand-ins here (no traffic
    leaves this machine); apt-get/dpkg-query/systemctl record their calls."""
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    try:
        gen = subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                              "impostor <impostor@example.invalid>", "ed25519", "sign", "never"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert gen.returncode == 0, gen.stderr
        key = subprocess.run(["gpg", "--armor", "--export"], capture_output=True, text=True, env=env, timeout=30)
    finally:
        # gpg starts an agent for this home that outlives the test (and its temp dir)
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], capture_output=True)
    (tmp_path / "impostor.asc").write_text(key.stdout)
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fakes = {
        "curl": f'echo "curl $*" >> {log}\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && cp {tmp_path}/impostor.asc "$2"; shift; done',
        "apt-get": f'echo "apt-get $*" >> {log}',
        "dpkg-query": "exit 1",
        "systemctl": f'echo "systemctl $*" >> {log}',
        "cloud-init": "exit 0",
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "install-packages.sh"
    script.write_text(all_roles()["worker"]["usr/local/lib/onionstack/install-packages.sh"].content)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                            env={**env, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 1
    assert "expected A3C4F0F979CAA22CDBA8F512EE8CBC9E886DDD89: refusing" in result.stderr
    calls = log.read_text()
    assert "https://deb.torproject.org/torproject.org/A3C4F0F979CAA22CDBA8F512EE8CBC9E886DDD89.asc" in calls
    assert "install -y -q --no-install-recommends tor" not in calls
    assert not Path("/etc/apt/sources.list.d/tor-project.list").exists()
