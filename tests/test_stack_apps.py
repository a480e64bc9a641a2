"""App sites in the stack (docs/apps.md), under mocks: an app site and a proxy site in one
stack render, validate and pass the security checks (5432 only from the workers, a role
and a password per app); the rollout order (migrations, then one worker at a time, drained
first); the environment reaches the workers only in secret stdin; the ECR repository.
And the rendered files with the real tools: nginx (PROXY protocol in, circuit id out to the
app as a header, never logged), systemd-analyze (the podman unit), shellcheck (scripts)."""
from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import mockrun
from infra.config import ConfigError, parse_config
from mockrun import demo_master_key, mock_password, reveal
from nodes.apps import AppHostSpec, AppRelease, app_secret_files, drain_switch_script, migrate_script, \
    render_app_host, undrain_script
from nodes.payload import unpack
from nodes.render import AppSiteSpec, Layout, SiteSpec, WorkerSpec, render_worker
from tests.conftest_tools import SHELLCHECK, Nginx, free_port, onion_address_for, request, short_tmpdir, \
    write_tree
from tests.stackmocks import minimal_config, run
from tests.test_stack_security import INGRESS, rules

DIGEST = "sha256:" + "ab" * 32
IMAGE = "ghcr.io/example/guestbook@" + DIGEST
SITES = [{"name": "news", "domain": "example.com"},
         {"name": "guestbook", "kind": "app",
          "app": {"image": IMAGE, "env": {"GREETING": "hello"}, "migrate": ["python", "-m", "guestbook", "migrate"]}},
         {"name": "forum", "kind": "app", "app": {"image": DIGEST, "ecr": True, "port": 3000, "healthPath": "/up"}}]


def mixed_config(**overrides):
    cfg = minimal_config(sites=SITES, masterKeys={s["name"]: demo_master_key(s["name"]) for s in SITES}, workers=3,
                         availabilityZones=2)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def result():
    return run(mixed_config())


def stdin_files(result, name):
    return unpack(reveal(result.named(name).inputs["stdin"]))


# ---------------------------------------------------------------- config
def test_config_refuses_what_an_app_site_cannot_be():
    keys = {s["name"]: demo_master_key(s["name"]) for s in SITES}

    def parse(app_site):
        return parse_config(minimal_config(sites=[SITES[0], app_site], masterKeys={"news": keys["news"],
                                                                                  app_site["name"]: keys["guestbook"]}))
    with pytest.raises(ConfigError, match=r"sites\[1\]\.app\.image = .*pinned by digest"):
        parse({"name": "guestbook", "kind": "app", "app": {"image": "ghcr.io/example/guestbook:latest"}})
    with pytest.raises(ConfigError, match=r"sites\[1\]\.domain = .*no clearnet origin"):
        parse({"name": "guestbook", "kind": "app", "domain": "example.org", "app": {"image": IMAGE}})
    with pytest.raises(ConfigError, match=r"sites\[1\]\.app\.env\.DATABASE_URL .*set by the stack"):
        parse({"name": "guestbook", "kind": "app", "app": {"image": IMAGE, "env": {"DATABASE_URL": "x"}}})
    with pytest.raises(ConfigError, match=r"sites\[1\]\.app is missing"):
        parse({"name": "guestbook", "kind": "app"})
    with pytest.raises(ConfigError, match=r"sites\[1\]\.app = .*kind: app"):
        parse({"name": "guestbook", "domain": "example.org", "app": {"image": IMAGE}})
    with pytest.raises(ConfigError, match=r"sites\[1\]\.kind = \"web\""):
        parse({"name": "guestbook", "kind": "web", "domain": "example.org"})
    with pytest.raises(ConfigError, match=r"database\.enabled = false: sites\[1\] \(guestbook\) is an app site"):
        parse_config(minimal_config(sites=SITES[:2], masterKeys={"news": keys["news"], "guestbook": keys["guestbook"]},
                                    database={"enabled": False}))


# ---------------------------------------------------------------- the stack
def test_security_groups_unchanged_5432_only_from_workers(result):
    assert ("database", "tcp", 5432, 5432, "sg:worker") in rules(result, INGRESS)
    opened = {(g, p, peer) for g, _, p, _, peer in rules(result, INGRESS)}
    assert {x for x in opened if x[1] == 5432} == {("database", 5432, "sg:worker")}
    assert all(r.input("cidrIpv4") != "0.0.0.0/0" for r in result.of_type(INGRESS))


def test_each_app_gets_its_own_role_database_and_password(result):
    files = stdin_files(result, "database-postgres")
    for app in ("guestbook", "forum"):
        pw = files[f"etc/onionstack/postgres/apps/{app}.password"]
        assert pw.content == mock_password(f"app-{app}-database-password") and (pw.mode, pw.owner) == (0o600, "postgres")
    passwords = {mock_password(f"app-{a}-database-password") for a in ("guestbook", "forum")}
    assert len(passwords) == 2 and mock_password("database-password") not in passwords
    hba = files["etc/postgresql/16/main/pg_hba.conf"].content
    hostssl = [line.split() for line in hba.splitlines() if line.startswith("hostssl")]
    assert {(db, role) for _, db, role, *_ in hostssl} == {
        ("onionstack", "onionstack"), ("app_guestbook", "app_guestbook"), ("app_forum", "app_forum")}
    private = {s.input("cidrBlock") for s in result.of_type("aws:ec2/subnet:Subnet") if s.input("tags")["tier"] == "private"}
    assert {line[3] for line in hostssl} == private
    roles = files["usr/local/lib/onionstack/database-roles.sql"].content
    assert "REVOKE ALL ON DATABASE app_guestbook FROM PUBLIC;" in roles
    for name in ("app-guestbook-database-password", "app-forum-database-password"):
        assert "result" in result.named(name).additional_secret_outputs


def test_workers_render_the_app_site_without_rewriting_and_the_proxy_site_as_before(result):
    files = stdin_files(result, "worker-1-tor-nginx")
    app = files["etc/onionstack/nginx/sites/guestbook.conf"].content
    assert "proxy_pass http://app_guestbook;" in app
    assert "server 127.0.0.1:18080 max_fails=0;" in app and "server 127.0.0.1:19080 max_fails=0;" in app
    assert "subs_filter" not in app and "X-Onion-Circuit $proxy_protocol_addr" in app
    forum = files["etc/onionstack/nginx/sites/forum.conf"].content
    assert "server 127.0.0.1:18081 max_fails=0;" in forum and "server 127.0.0.1:19081 max_fails=0;" in forum
    news = files["etc/onionstack/nginx/sites/news.conf"].content
    assert "proxy_pass https://" in news and "X-Onion-Circuit" not in news  # the proxy site as before
    torrc = files["etc/onionstack/tor/tor1.torrc"].content
    assert torrc.count("HiddenServiceExportCircuitID haproxy") == 3
    # the onion <-> clearnet maps cover the proxy site only (an app site has no domain)
    onionmap = files["etc/onionstack/nginx/onionmap.conf"].content
    assert "example\\.com" in onionmap or "example.com" in onionmap
    # the balancer publishes every site, app sites included
    core = unpack(reveal(result.named("balancer-core").inputs["stdin"]))
    balancer_yaml = core["etc/onionstack/balancer.yaml"].content
    assert all(f"name: {n}" in balancer_yaml for n in ("news", "guestbook", "forum"))


def test_app_environment_reaches_workers_only_in_secret_stdin(result):
    db_ip = result.named("database-instance").state["privateIp"]
    for n in (1, 2, 3):
        step = result.named(f"worker-{n}-apps")
        assert mockrun.is_secret(step.inputs["stdin"])
        files = stdin_files(result, f"worker-{n}-apps")
        env = files["etc/onionstack/apps/guestbook.env"]
        assert (env.mode, env.owner) == (0o600, "root")
        pw = mock_password("app-guestbook-database-password")
        assert (f"DATABASE_URL=postgresql://app_guestbook:{pw}@{db_ip}:5432/app_guestbook?sslmode=verify-full"
                f"&sslrootcert=/etc/onionstack/database-ca.pem\n") in env.content
        assert "GREETING=hello\n" in env.content and "PORT=8080\n" in env.content
        assert files["etc/onionstack/database-ca.pem"].content == result.outputs["databaseCaCertificate"]
        unit = files["etc/systemd/system/onionstack-app-guestbook-a.service"].content
        assert IMAGE in unit and "--publish 127.0.0.1:18080:8080" in unit and "--pull=never" in unit
        unit_b = files["etc/systemd/system/onionstack-app-guestbook-b.service"].content
        assert IMAGE in unit_b and "--publish 127.0.0.1:19080:8080" in unit_b
        forum = files["etc/systemd/system/onionstack-app-forum-b.service"].content
        repo = result.named("app-forum-images").state["repositoryUrl"]
        assert f"{repo}@{DIGEST}" in forum and "REGISTRY_AUTH_FILE=" in forum
        assert pw not in step.input("create") and pw not in str(step.input("triggers"))


def test_rollout_order_migrate_then_one_worker_at_a_time(result):
    def deps(name):
        return set(result.named(name).dependencies)

    urn = {r.name: r.urn for r in result.resources}
    migrate = "app-guestbook-migrate"
    assert urn["database-postgres"] in deps(migrate) and urn["worker-1-tor-nginx"] in deps(migrate)
    assert urn[migrate] in deps("worker-1-app-drain") and urn["balancer-core"] in deps("worker-1-app-drain")
    assert urn["worker-1-app-drain"] in deps("worker-1-apps")
    assert urn["worker-1-apps"] in deps("worker-1-app-undrain")
    assert urn["worker-1-app-undrain"] in deps("worker-2-app-drain")
    assert urn["worker-2-app-undrain"] in deps("worker-3-app-drain")
    # the drain names only that worker's app-site instances
    drain = result.named("worker-2-app-drain").input("create")
    addresses = result.named("worker-2-tor-nginx").state["stdout"]
    for line in addresses.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "onionstack-instance":
            assert (parts[3] in drain) == (parts[1] in ("guestbook", "forum")), line
    # the release digest triggers every step; the same config twice gives the same
    again = run(mixed_config(workers=3, availabilityZones=2, vpcCidr="10.42.0.0/16"))
    assert again.named("worker-1-apps").input("triggers") == result.named("worker-1-apps").input("triggers")
    other = run(mixed_config(sites=[SITES[0], {**SITES[1], "app": {**SITES[1]["app"], "image": IMAGE[:-2] + "cd"}},
                                    SITES[2]]))
    for name in ("worker-1-app-drain", "worker-1-apps", "worker-3-app-undrain", "app-guestbook-migrate"):
        assert other.named(name).input("triggers") != result.named(name).input("triggers"), name


def test_ecr_repository_is_kms_encrypted_scanned_and_immutable(result):
    repo = result.named("app-forum-images")
    assert repo.input("imageTagMutability") == "IMMUTABLE"
    assert repo.input("imageScanningConfiguration") == {"scanOnPush": True}
    (enc,) = repo.input("encryptionConfigurations")
    assert enc["encryptionType"] == "KMS" and enc["kmsKey"] == result.named("app-images-key").state["arn"]
    assert result.named("app-images-key").input("enableKeyRotation") is True
    profile = result.named("app-image-pull-profile")
    for n in (1, 2, 3):
        assert result.named(f"worker-{n}-instance").input("iamInstanceProfile") == profile.state["name"]
    policy = result.named("app-image-pull-policy").input("policy")
    assert repo.state["arn"] in policy and '"ecr:PutImage"' not in policy


def test_a_stack_without_app_sites_has_no_app_steps():
    plain = run(minimal_config())
    assert not [r for r in plain.resources if "app" in r.name]


# ---------------------------------------------------------------- real tools
def _host_spec(root="/", registry=None):
    apps = (AppRelease("guestbook", IMAGE, 8080, 18080, env=(("GREETING", "hello"),),
                       migrate=("python", "-m", "guestbook", "migrate")),
            AppRelease("forum", "000000000000.dkr.ecr.us-east-1.amazonaws.com/forum@" + DIGEST, 3000, 18081, "/up",
                       registry="000000000000.dkr.ecr.us-east-1.amazonaws.com"))
    from lab.database import make_pki
    return AppHostSpec(apps=apps, ca_pem=make_pki("10.42.1.10").ca_pem, layout=Layout(root=root))


def test_app_unit_passes_systemd_analyze(tmp_path):
    files = render_app_host(_host_spec())
    units = {k: v for k, v in files.items() if k.startswith("etc/systemd/system/")}
    assert sorted(units) == [f"etc/systemd/system/onionstack-app-{site}-{slot}.service"
                             for site in ("forum", "guestbook") for slot in "ab"]
    for rel, f in units.items():
        (tmp_path / Path(rel).name).write_text(f.content)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(tmp_path / Path(r).name) for r in units]],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "onionstack-app" in line]
    assert result.returncode == 0 and not problems, result.stderr
    # a unit with a typo is caught by the same check
    bad = tmp_path / "onionstack-app-bad.service"
    bad.write_text(units["etc/systemd/system/onionstack-app-forum-a.service"].content.replace("Restart=", "Restrat="))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert "Restrat" in result.stderr


def test_app_scripts_are_shellcheck_clean(tmp_path):
    files = render_app_host(_host_spec())
    scripts = {k: v.content for k, v in files.items() if k.endswith(".sh")}
    assert sorted(scripts) == ["usr/local/lib/onionstack/apps/apply.sh", "usr/local/lib/onionstack/apps/install-packages.sh"]
    common = dict(config="/etc/onionstack/balancer.yaml", state_dir="/var/lib/onion-balancer",
                  python="/opt/onionstack/venv/bin/python", package_lib="/opt/onionstack/lib",
                  reload="systemctl reload onion-balancer.service")
    addresses = [onion_address_for("a1"), onion_address_for("a2")]
    scripts["drain.sh"] = drain_switch_script(addresses, **common)
    scripts["undrain.sh"] = undrain_script(addresses, **common)
    scripts["migrate.sh"] = migrate_script(_host_spec().apps[0])
    for name, text in scripts.items():
        path = tmp_path / Path(name).name
        path.write_text(text if text.startswith("#!") else "#!/usr/bin/env bash\n" + text)
        r = subprocess.run([SHELLCHECK, "--severity=style", "--shell=bash", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}:\n{r.stdout}"
    assert "'python' '-m' 'guestbook' 'migrate'" in scripts["migrate.sh"] or "python -m guestbook migrate" in scripts["migrate.sh"]


def test_nginx_passes_the_circuit_id_to_the_app_and_logs_nothing(tmp_path):
    """The rendered worker (an app site and a proxy site) in the real nginx: a request with
    tor's PROXY header reaches the app with X-Onion-Circuit = the circuit's address, the
    reader's forged X-Forwarded-For / X-Onion-Circuit replaced; no access log is written."""
    seen = []

    class App(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(dict(self.headers))
            body = b"hello from the app\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    app_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app_server.serve_forever, daemon=True).start()
    root = short_tmpdir("os-app-")
    app_site = SiteSpec("guestbook", None, onion_address_for("guestbook"),
                        app=AppSiteSpec(host_port=app_server.server_address[1]))
    proxy_site = SiteSpec("news", "example.com", onion_address_for("news"))
    spec = WorkerSpec(sites=(proxy_site, app_site), resolver="127.0.0.1", layout=Layout(root=str(root)),
                      nginx_user=None, tor_user=None)
    files = render_worker(spec)
    write_tree(root, files)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        Path(spec.layout.path("lib_dir", "nginx", sub)).mkdir(parents=True, exist_ok=True)
    for name in ("run_dir", "log_dir"):
        Path(spec.layout.path(name)).mkdir(parents=True, exist_ok=True)
    nginx = Nginx(Path(spec.layout.path("etc_dir", "nginx", "nginx.conf")))
    try:
        sock = spec.listener(app_site, "tor1").removeprefix("unix:")
        nginx.wait_for_socket(sock)
        resp = request(sock, "/entries", app_site.onion_host, circuit_id=0x12345,
                       headers={"X-Forwarded-For": "203.0.113.9", "X-Onion-Circuit": "forged"})
        assert resp.status == 200 and resp.text == "hello from the app\n"
        headers = {k.lower(): v for k, v in seen[-1].items()}
        assert headers["x-onion-circuit"] == "fc00:dead:beef:4dad::1:2345"
        assert "x-forwarded-for" not in headers or headers["x-forwarded-for"] == ""
        assert headers["host"] == app_site.onion_host
    finally:
        log = nginx.stop()
        app_server.shutdown()
    logs = "".join(p.read_text(errors="replace") for p in Path(spec.layout.path("log_dir")).glob("*") if p.is_file())
    assert "4dad::1:2345" not in logs and "4dad::1:2345" not in log
    assert not list(Path(spec.layout.path("log_dir")).glob("*access*"))


def test_apply_starts_the_new_release_beside_the_old_and_stops_the_old_only_once_healthy(tmp_path, monkeypatch):
    """The systemd half of the app step's apply.sh, with a recording systemctl that keeps
    which units run and a curl that answers on a running unit's port: the first release on
    slot a; the next on slot b, the old one stopped after b is healthy; a release that never
    becomes healthy is stopped again and the running one stays."""
    import os

    import nodes.apps

    monkeypatch.setattr(nodes.apps, "HEALTH_WAIT_SECONDS", 2)
    root, work = short_tmpdir("os-applive-"), short_tmpdir("os-appstage-")
    os.chmod(root, 0o755)
    bin_dir, marker, state, log = tmp_path / "bin", tmp_path / "systemd", tmp_path / "state", tmp_path / "calls"
    for d in (bin_dir, marker, state):
        d.mkdir()
    fakes = {
        "systemctl": f"""echo "systemctl $*" >> {log}
unit_port() {{ case "$1" in *-a.service) echo 18080;; *-b.service) echo 19080;; esac; }}
case "$1" in
  is-active) test -e "{state}/active-$3"; exit $?;;
  restart) touch "{state}/active-$2"; [ -e "{state}/broken" ] || touch "{state}/up-$(unit_port "$2")";;
  stop) rm -f "{state}/active-$2" "{state}/up-$(unit_port "$2")";;
  disable) rm -f "{state}/active-$3" "{state}/up-$(unit_port "$3")";;
esac
exit 0""",
        "curl": f"""for a in "$@"; do case "$a" in http://127.0.0.1:*) p=${{a#http://127.0.0.1:}}; p=${{p%%/*}};; esac; done
test -e "{state}/up-$p"
""",
        "podman": "exit 0", "systemd-analyze": "exit 0", "journalctl": "exit 0", "sleep": "exit 0",
    }
    for tool, body in fakes.items():
        (bin_dir / tool).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ONIONSTACK_SYSTEMD_MARKER": str(marker)}
    host = _host_spec(str(root))
    guestbook, ca_pem = host.apps[0], host.ca_pem
    stage = work / "stage"

    def apply(greeting):
        release = AppRelease(guestbook.site, guestbook.image, guestbook.port, guestbook.host_port,
                             env=(("GREETING", greeting),))
        spec = AppHostSpec(apps=(release,), ca_pem=ca_pem, layout=Layout(root=str(root)),
                           podman=str(bin_dir / "podman"))  # a fake: nothing is pulled
        shutil.rmtree(stage, ignore_errors=True)
        write_tree(stage, {**render_app_host(spec), **app_secret_files(spec, {"guestbook": "postgresql://x"})})
        log.write_text("")
        result = subprocess.run(["bash", str(stage / "usr/local/lib/onionstack/apps/apply.sh"), str(stage)],
                                capture_output=True, text=True, timeout=60, env=env)
        return result, log.read_text().splitlines()

    a, b = "onionstack-app-guestbook-a.service", "onionstack-app-guestbook-b.service"
    first, calls = apply("hello")
    assert first.returncode == 0, first.stderr
    assert f"systemctl restart {a}" in calls and f"systemctl enable {a}" in calls
    assert not [c for c in calls if "disable" in c or (b in c.split() and "is-active" not in c)]

    second, calls = apply("hello again")  # a new environment: a switch
    assert second.returncode == 0, second.stderr
    assert calls.index(f"systemctl restart {b}") < calls.index(f"systemctl disable --now {a}")
    assert f"systemctl enable {b}" in calls and f"systemctl restart {a}" not in calls
    assert sorted(p.name for p in state.iterdir()) == [f"active-{b}", "up-19080"]

    same, calls = apply("hello again")  # nothing changed: nothing restarted
    assert same.returncode == 0 and not [c for c in calls if "restart" in c or "disable" in c]

    (state / "broken").touch()  # the next release never answers its health path
    third, calls = apply("broken release")
    assert third.returncode == 1 and f"{b} keeps serving" in third.stderr
    assert calls.index(f"systemctl restart {a}") < calls.index(f"systemctl stop {a}")
    assert not [c for c in calls if "disable" in c]
    assert sorted(p.name for p in state.iterdir()) == [f"active-{b}", "broken", "up-19080"]
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def test_nginx_sends_to_whichever_of_the_two_release_ports_answers():
    """The switch on a worker: the running release on one port, the next one started on the
    other, the old one stopped. In the real nginx no request fails at any point, POSTs
    included: a refused connection is tried on the other port."""
    def app_on(port, release):
        class App(http.server.BaseHTTPRequestHandler):
            def reply(self):
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = f"{release} {self.command}\n".encode()
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = reply  # noqa: N815

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), App)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    ports = (free_port(), free_port())
    root = short_tmpdir("os-app2-")
    site = SiteSpec("guestbook", None, onion_address_for("guestbook"),
                    app=AppSiteSpec(host_port=ports[0], next_port=ports[1]))
    spec = WorkerSpec(sites=(site,), resolver="127.0.0.1", layout=Layout(root=str(root)), nginx_user=None,
                      tor_user=None)
    write_tree(root, render_worker(spec))
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        Path(spec.layout.path("lib_dir", "nginx", sub)).mkdir(parents=True, exist_ok=True)
    for name in ("run_dir", "log_dir"):
        Path(spec.layout.path(name)).mkdir(parents=True, exist_ok=True)
    nginx = Nginx(Path(spec.layout.path("etc_dir", "nginx", "nginx.conf")))
    sock = spec.listener(site, "tor1").removeprefix("unix:")

    def answers(n=6):
        out = []
        for i in range(n):
            method = "POST" if i % 3 == 2 else "GET"
            resp = request(sock, "/entries", site.onion_host, circuit_id=i + 1, method=method,
                           body=b"text=x" if method == "POST" else None,
                           headers={"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else None)
            out.append((resp.status, resp.text))
        return out

    old = new = None
    try:
        nginx.wait_for_socket(sock)
        old = app_on(ports[1], "release-1")  # running on the second port, the first one idle
        assert {a for a in answers()} == {(200, "release-1 GET\n"), (201, "release-1 POST\n")}
        new = app_on(ports[0], "release-2")  # the next release beside it: both answer
        assert {status for status, _ in answers()} <= {200, 201}
        old.shutdown()
        old.server_close()  # the old release stopped: its port refuses
        old = None
        assert {a for a in answers(9)} == {(200, "release-2 GET\n"), (201, "release-2 POST\n")}
    finally:
        nginx.stop()
        for server in (old, new):
            if server is not None:
                server.shutdown()
                server.server_close()


def test_drain_and_undrain_scripts_edit_the_balancer_config_and_put_it_back(tmp_path):
    """The rendered scripts, run with bash against a balancer.yaml (no balancer running: the
    waits are bounded at 0 s and go on with a warning)."""
    import sys

    import yaml

    repo = str(Path(__file__).resolve().parent.parent)
    a1, a2, b1 = onion_address_for("w1-app"), onion_address_for("w2-app"), onion_address_for("w1-news")
    config = tmp_path / "balancer.yaml"
    original = {"publish": True, "state_dir": str(tmp_path / "state"), "frontends": [
        {"name": "guestbook", "key_file": "/k", "instances": [{"address": f"{a1}.onion"}, {"address": f"{a2}.onion"}]},
        {"name": "news", "key_file": "/k2", "instances": [{"address": f"{b1}.onion"}]}]}
    config.write_text(yaml.safe_dump(original, sort_keys=False))
    config.chmod(0o640)
    common = dict(config=str(config), state_dir=str(tmp_path / "state"), python=sys.executable, package_lib=repo,
                  wait=0, poll=1, reload=f"echo reloaded >> {tmp_path}/reloads")

    def bash(script):
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)

    drained = bash(drain_switch_script([a1], **common))
    assert drained.returncode == 0, drained.stderr
    assert "WARNING: not drained after 0 s" in drained.stderr  # no status: it waited, bounded
    live = yaml.safe_load(config.read_text())
    assert [i["address"] for i in live["frontends"][0]["instances"]] == [f"{a2}.onion"]
    assert live["frontends"][1] == original["frontends"][1]  # the proxy site untouched
    assert config.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "reloads").read_text() == "reloaded\n"
    undrained = bash(undrain_script([a1], **common))
    assert undrained.returncode == 0, undrained.stderr
    assert yaml.safe_load(config.read_text()) == original
    assert not (tmp_path / "balancer.yaml.onionstack-full").exists()

    # the balancer step installs a new config while a worker is drained: the undrain keeps it
    assert bash(drain_switch_script([a1], **common)).returncode == 0
    newer = {**original, "publish": False}
    config.write_text(yaml.safe_dump(newer, sort_keys=False))
    assert bash(undrain_script([a1], **common)).returncode == 0
    assert yaml.safe_load(config.read_text()) == newer

    # the only instances of a site are never drained: the switch happens in place
    single = bash(drain_switch_script([a1, a2], **common))
    assert single.returncode == 0 and "holds the only instances" in single.stdout
    assert yaml.safe_load(config.read_text()) == newer
