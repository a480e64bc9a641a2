"""Worker templates rendered for a prod-like config (1 site) and a 3-site config, checked
by the real tools: `tor --verify-config -f` on every torrc and `nginx -t` on nginx.conf."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from nodes import render
from nodes.render import Layout, NginxTuning, RenderError, SiteDos, SiteSpec, TorTuning, ValidationPath, WorkerSpec
from tests.conftest_tools import (NGINX, TOR, onion_address_for, onion_address_starting_with_digit, self_signed,
                                  run, short_tmpdir, write_tree)

pytestmark = pytest.mark.tools

PROD_SITE = SiteSpec("news", "example.com", onion_address_for("news"))
THREE_SITES = (
    SiteSpec("news", "example.com", onion_address_for("news"),
             block_paths=("/admin/", r"^/wp-(admin|login)\.php", r"^/a\\b{2}$")),
    SiteSpec("shop", "shop-example.org", onion_address_starting_with_digit(),
             block_hosts=("checkout.shop-example.org",)),
    SiteSpec("wiki-2", "wiki.example.net", onion_address_for("wiki"), origin_address="origin.example.org:443"),
)


def prod_stack_sites() -> tuple[SiteSpec, ...]:
    """The sites of Pulumi.prod.yaml as the stack gives them to the renderer (the onion
    addresses come from secret master keys there; test addresses here)."""
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "Pulumi.prod.yaml").read_text())["config"]
    return tuple(SiteSpec(s["name"], s["domain"], onion_address_for("prod-" + s["name"]),
                          origin_address=s.get("originAddress"), block_hosts=tuple(s.get("blockHosts", ())),
                          block_paths=tuple(s.get("blockPaths", ())))
                 for s in config["onionstack:sites"])


def prod_like(root: Path, sites=(PROD_SITE,), daemons: int = 2) -> WorkerSpec:
    """Production values (users, units, CA bundle, resolver) with the tree under `root`."""
    return WorkerSpec(sites=sites, resolver="10.42.0.2", tor_daemons=daemons,
                      layout=Layout(root=str(root)))


def materialize(spec: WorkerSpec) -> dict:
    files = render.render_worker(spec)
    for d in render.worker_directories(spec):
        os.makedirs(d.path, exist_ok=True)
        os.chmod(d.path, d.mode)
    write_tree(Path(spec.layout.root), files)
    return files


def tor_verify(spec: WorkerSpec, daemon: str):
    return run([TOR, "--verify-config", "-f", f"{spec.layout.root}/etc/onionstack/tor/{daemon}.torrc"])


def nginx_test(spec: WorkerSpec):
    return run([NGINX, "-t", "-c", f"{spec.layout.root}/etc/onionstack/nginx/nginx.conf", "-e", "stderr"])


@pytest.mark.parametrize("sites,daemons", [((PROD_SITE,), 2), (THREE_SITES, 3), (prod_stack_sites(), 2)],
                         ids=["prod-1-site", "3-sites", "Pulumi.prod.yaml"])
def test_real_tools_accept_rendered_worker(sites, daemons):
    root = short_tmpdir()
    spec = prod_like(root, sites, daemons)
    files = materialize(spec)
    torrcs = sorted(k for k in files if k.endswith(".torrc"))
    assert torrcs == [f"etc/onionstack/tor/tor{i}.torrc" for i in range(1, daemons + 1)]
    for daemon in spec.daemon_names:
        result = tor_verify(spec, daemon)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Configuration was valid" in result.stdout
        # tor parsed and registered every site's master address from ob_config
        for site in sites:
            assert f"MasterOnionAddress {site.onion_host} registered" in result.stdout
    result = nginx_test(spec)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_each_hidden_service_has_the_required_options():
    spec = prod_like(Path("/srv/x"), THREE_SITES, 2)
    files = render.render_worker(spec)
    torrc = files["etc/onionstack/tor/tor2.torrc"].content
    blocks = torrc.split("HiddenServiceDir ")[1:]
    assert len(blocks) == 3
    for site, block in zip(THREE_SITES, blocks):
        assert block.startswith(f"/srv/x/var/lib/onionstack/tor/tor2/hs/{site.name}\n")
        for line in ("HiddenServiceOnionBalanceInstance 1", "HiddenServiceNumIntroductionPoints 3",
                     "HiddenServiceExportCircuitID haproxy", "HiddenServiceEnableIntroDoSDefense 1",
                     "HiddenServiceMaxStreams 32", "HiddenServiceMaxStreamsCloseCircuit 1",
                     f"HiddenServicePort 80 unix:/srv/x/run/onionstack/{site.name}.tor2.sock"):
            assert line + "\n" in block, (site.name, line)
    assert "SafeLogging 1\n" in torrc and "SocksPort 0\n" in torrc
    assert files["var/lib/onionstack/tor/tor2/hs/shop/ob_config"].content == \
        f"MasterOnionAddress {THREE_SITES[1].onion_host}\n"
    assert files["var/lib/onionstack/tor/tor2/hs/shop/ob_config"].owner == "debian-tor"
    assert files["var/lib/onionstack/tor/tor2/hs/shop/ob_config"].mode == 0o600


def test_bad_master_address_fails_tor_verify():
    """The check is real: tor rejects an ob_config naming a malformed master address."""
    root = short_tmpdir()
    spec = prod_like(root)
    materialize(spec)
    ob_config = root / "var/lib/onionstack/tor/tor1/hs/news/ob_config"
    ob_config.write_text("MasterOnionAddress not-an-onion.onion\n")
    result = tor_verify(spec, "tor1")
    assert result.returncode != 0
    ob_config.unlink()
    result = tor_verify(spec, "tor1")
    assert result.returncode != 0, "tor must refuse an OnionBalance instance without ob_config"


def test_include_and_lab_overrides(tmp_path):
    """The lab's shape: current user, TCP listeners, an %include of private-network lines."""
    extra = tmp_path / "extra.torrc"
    extra.write_text("DisableNetwork 1\nClientUseIPv6 0\n")
    root = short_tmpdir()
    spec = WorkerSpec(sites=THREE_SITES[:2], resolver="127.0.0.1", tor_daemons=1,
                      layout=Layout(root=str(root)), tor_user=None, nginx_user=None,
                      tor_include=str(extra), nginx_tcp_base_port=24000,
                      tor=TorTuning(intro_points=5), nginx=NginxTuning(access_log=True))
    files = materialize(spec)
    torrc = files["etc/onionstack/tor/tor1.torrc"].content
    assert f"%include {extra}\n" in torrc
    assert "HiddenServicePort 80 127.0.0.1:24000\n" in torrc
    assert "HiddenServicePort 80 127.0.0.1:24001\n" in torrc
    assert "HiddenServiceNumIntroductionPoints 5\n" in torrc
    nginx_conf = files["etc/onionstack/nginx/nginx.conf"].content
    assert "\nuser " not in nginx_conf and "access_log off" not in nginx_conf
    result = tor_verify(spec, "tor1")
    assert result.returncode == 0, result.stdout
    assert f'Including configuration file "{extra}"' in result.stdout
    assert nginx_test(spec).returncode == 0


def test_rendering_is_deterministic_and_hash_tracks_changes():
    a = render.render_worker(prod_like(Path("/r"), THREE_SITES))
    b = render.render_worker(prod_like(Path("/r"), THREE_SITES))
    assert a == b and render.content_hash(a) == render.content_hash(b)
    c = render.render_worker(prod_like(Path("/r"), THREE_SITES, daemons=3))
    assert render.content_hash(c) != render.content_hash(a)
    mode_only = dict(a)
    key = "etc/onionstack/nginx/nginx.conf"
    mode_only[key] = render.RenderedFile(a[key].content, 0o600, a[key].owner)
    assert render.content_hash(mode_only) != render.content_hash(a)
    assert len(render.content_hash(a)) == 64


@pytest.mark.parametrize("kwargs,field", [
    (dict(name="News"), "site.name"),
    (dict(domain="http://example.com"), "sites[news].domain"),
    (dict(onion_address="abc.onion"), "sites[news].onion_address"),
    (dict(onion_address="a" * 55 + "d"), "sites[news].onion_address"),  # checksum
    (dict(origin_address="origin.example.com"), "sites[news].origin_address"),
    (dict(origin_address="origin_x:443"), "sites[news].origin_address"),
    (dict(block_hosts=("evil.org",)), "sites[news].block_hosts"),
    (dict(block_paths=("admin",)), "sites[news].block_paths"),
    (dict(block_paths=("/a b",)), "sites[news].block_paths"),
    (dict(block_paths=("^/a(",)), "sites[news].block_paths"),
    (dict(block_paths=('^/a"',)), "sites[news].block_paths"),
])
def test_site_validation_names_field_and_value(kwargs, field):
    base = dict(name="news", domain="example.com", onion_address=onion_address_for("news"))
    with pytest.raises(RenderError) as err:
        SiteSpec(**{**base, **kwargs})
    assert str(err.value).startswith(field + ":")
    assert repr(next(iter(kwargs.values()))).strip("()',") in str(err.value)


def test_worker_validation():
    with pytest.raises(RenderError, match=r"^resolver: '8.8.8.8'"):
        WorkerSpec(sites=(PROD_SITE,), resolver="8.8.8.8")
    with pytest.raises(RenderError, match=r"^tor_daemons: 9"):
        WorkerSpec(sites=(PROD_SITE,), resolver="10.42.0.2", tor_daemons=9)
    with pytest.raises(RenderError, match=r"^sites\[\]\.domain"):
        WorkerSpec(sites=(PROD_SITE, SiteSpec("b", "example.com", onion_address_for("b"))),
                   resolver="10.42.0.2")
    with pytest.raises(RenderError, match=r"subdomain of sites\[news\]"):
        WorkerSpec(sites=(PROD_SITE, SiteSpec("b", "www.example.com", onion_address_for("b"))),
                   resolver="10.42.0.2")
    with pytest.raises(RenderError, match=r"^layout.run_dir.*107 bytes"):
        WorkerSpec(sites=(PROD_SITE,), resolver="10.42.0.2", layout=Layout(root="/" + "x" * 90))
    with pytest.raises(RenderError, match=r"^intro_points: 0"):
        TorTuning(intro_points=0)
    with pytest.raises(RenderError, match=r"^nginx.rate: '10/s'"):
        NginxTuning(rate="10/s")
    # addresses are normalised: '.onion' suffix and case do not matter
    upper = SiteSpec("news", "Example.COM.", onion_address_for("news").upper() + ".onion")
    assert upper == PROD_SITE


# ---------------------------------------------------------------- HTTPS and DoS controls

DOS_SITES = (
    SiteSpec("news", "example.com", onion_address_for("news"), https=True,
             dos=SiteDos(pow=True, pow_queue_rate=20, pow_queue_burst=40, intro_rate=5, intro_burst=15,
                         max_streams=16)),
    SiteSpec("shop", "shop-example.org", onion_address_starting_with_digit(),
             dos=SiteDos(intro_defense=False, max_streams=0, max_streams_close_circuit=False)),
)


def hs_block(torrc: str, site: str) -> str:
    return next(b for b in torrc.split("\n# --- site ")[1:] if b.startswith(site + ":"))


def test_dos_controls_and_https_port_per_site_pass_tor_verify_config():
    root = short_tmpdir()
    spec = prod_like(root, DOS_SITES, 2)
    tls = {"news": tuple(p.read_text() for p in self_signed(root / "certs", [DOS_SITES[0].onion_host]))}
    files = {**render.render_worker(spec), **render.worker_secret_files(spec, tls)}
    materialize(spec)
    write_tree(root, files)
    torrc = files["etc/onionstack/tor/tor2.torrc"].content
    news, shop = hs_block(torrc, "news"), hs_block(torrc, "shop")
    for line in (f"HiddenServicePort 80 unix:{root}/run/onionstack/news.tor2.sock",
                 f"HiddenServicePort 443 unix:{root}/run/onionstack/news.tor2.443.sock",
                 "HiddenServiceEnableIntroDoSDefense 1", "HiddenServiceEnableIntroDoSRatePerSec 5",
                 "HiddenServiceEnableIntroDoSBurstPerSec 15", "HiddenServicePoWDefensesEnabled 1",
                 "HiddenServicePoWQueueRate 20", "HiddenServicePoWQueueBurst 40", "HiddenServiceMaxStreams 16",
                 "HiddenServiceMaxStreamsCloseCircuit 1"):
        assert line + "\n" in news, line
    for line in ("HiddenServiceEnableIntroDoSDefense 0", "HiddenServicePoWDefensesEnabled 0",
                 "HiddenServiceMaxStreams 0", "HiddenServiceMaxStreamsCloseCircuit 0"):
        assert line + "\n" in shop, line
    assert "443" not in shop and "RatePerSec" not in shop and "PoWQueue" not in shop
    for daemon in spec.daemon_names:
        result = tor_verify(spec, daemon)
        assert result.returncode == 0, result.stdout + result.stderr
    result = nginx_test(spec)
    assert result.returncode == 0, result.stderr
    # the key is staged 0600 root, the chain 0644; apply.sh expects both (and installs them)
    key = files["etc/onionstack/tls/news.key"]
    assert (key.mode, key.owner) == (0o600, "root") and "PRIVATE KEY" in key.content
    assert files["etc/onionstack/tls/news.crt"].mode == 0o644
    apply = files["usr/local/lib/onionstack/apply.sh"].content
    assert "install_file etc/onionstack/tls/news.key 600 root\n" in apply
    assert "install_file etc/onionstack/tls/news.crt 644 root\n" in apply
    rendered = render.render_worker(spec)  # the public files: no key, no certificate
    assert "etc/onionstack/tls/news.key" not in rendered and "etc/onionstack/tls/news.crt" not in rendered
    assert not any("PRIVATE KEY" in f.content for f in rendered.values())


def test_tor_itself_refuses_a_rate_above_the_burst_as_the_spec_does():
    """The spec's rate <= burst rule is tor's own: the same values edited into a rendered
    torrc fail `tor --verify-config`, and the spec refuses them before rendering."""
    root = short_tmpdir()
    spec = prod_like(root, DOS_SITES[1:], 1)
    materialize(spec)
    path = Path(f"{root}/etc/onionstack/tor/tor1.torrc")
    good = path.read_text()
    for old, new in (("HiddenServiceEnableIntroDoSDefense 0\n",
                      "HiddenServiceEnableIntroDoSDefense 1\nHiddenServiceEnableIntroDoSRatePerSec 30\n"
                      "HiddenServiceEnableIntroDoSBurstPerSec 20\n"),
                     ("HiddenServicePoWDefensesEnabled 0\n",
                      "HiddenServicePoWDefensesEnabled 1\nHiddenServicePoWQueueRate 30\nHiddenServicePoWQueueBurst 20\n")):
        path.write_text(good.replace(old, new))
        result = tor_verify(spec, "tor1")
        assert result.returncode != 0 and "can not be smaller than the rate value" in result.stdout
    with pytest.raises(RenderError, match=r"^dos.intro_rate: 30 is invalid: use at most intro_burst \(20\)"):
        SiteDos(intro_rate=30, intro_burst=20)
    with pytest.raises(RenderError, match=r"^dos.pow_queue_rate: 30 is invalid"):
        SiteDos(pow=True, pow_queue_rate=30, pow_queue_burst=20)


@pytest.mark.parametrize("kwargs,field", [
    (dict(validation_paths=(ValidationPath("/a"), ValidationPath("/a"))), "sites[news].validation_paths"),
    (dict(foreign_onions=(("www.example.com", onion_address_for("fb")),)), "sites[news].foreign_onions"),
    (dict(foreign_onions=(("facebook.com", "abc.onion"),)), "sites[news].foreign_onions[facebook.com]"),
    (dict(foreign_onions=(("facebook.com", onion_address_for("news")),)), "sites[news].foreign_onions[facebook.com]"),
    (dict(foreign_onions=(("facebook.com", onion_address_for("a")), ("m.facebook.com", onion_address_for("b")))),
     "sites[news].foreign_onions"),
    (dict(https="yes"), "sites[news].https"),
])
def test_site_https_and_foreign_validation(kwargs, field):
    base = dict(name="news", domain="example.com", onion_address=onion_address_for("news"))
    with pytest.raises(RenderError) as err:
        SiteSpec(**{**base, **kwargs})
    assert str(err.value).startswith(field + ":")


@pytest.mark.parametrize("path,content", [("well-known/x", None), ("/a/../b", None), ("/a b", None),
                                          ("/x", 'say "hi"'), ("/x", "a$host"), ("/x", "a\\b"), ("/x", "")])
def test_validation_path_refuses_what_nginx_would_misread(path, content):
    with pytest.raises(RenderError, match=r"^validation_paths\["):
        ValidationPath(path, content)


def test_a_foreign_domain_may_not_be_another_sites_domain():
    news = SiteSpec("news", "example.com", onion_address_for("news"),
                    foreign_onions=(("shop-example.org", onion_address_for("x")),))
    with pytest.raises(RenderError, match=r"^sites\[news\]\.foreign_onions: 'shop-example.org'.*sites\[shop\] maps"):
        WorkerSpec(sites=(news, THREE_SITES[1]), resolver="10.42.0.2")
    other = SiteSpec("other", "other.net", onion_address_for("o"),
                     foreign_onions=(("fb.com", THREE_SITES[1].onion_address),))
    with pytest.raises(RenderError, match=r"sites\[shop\]'s address"):
        WorkerSpec(sites=(other, THREE_SITES[1]), resolver="10.42.0.2")


def test_worker_secret_files_wants_exactly_the_https_sites():
    spec = prod_like(Path("/r"), DOS_SITES, 1)
    with pytest.raises(RenderError, match=r"^tls: \[\] is invalid"):
        render.worker_secret_files(spec, {})
    with pytest.raises(RenderError, match=r"^tls\[news\]"):
        render.worker_secret_files(spec, {"news": ("chain", "key")})


def test_tcp_mode_puts_the_443_listeners_after_the_80_ones():
    spec = WorkerSpec(sites=DOS_SITES, resolver="127.0.0.1", tor_daemons=2, nginx_tcp_base_port=30000,
                      layout=Layout(root="/r"), tor_user=None, nginx_user=None)
    assert [spec.listener(s, d, p) for s in DOS_SITES for p in spec.ports(s) for d in spec.daemon_names] == [
        "127.0.0.1:30000", "127.0.0.1:30001", "127.0.0.1:30004", "127.0.0.1:30005",
        "127.0.0.1:30002", "127.0.0.1:30003"]


def test_apply_installs_the_tls_key_0600_root_and_nginx_accepts_it():
    """The worker's apply.sh, run as root like the remote step, with an HTTPS site: the
    staged key lands 0600 root and the chain 0644, nginx -t (as root, as the unit runs it)
    loads them; a stage without the key fails, naming it."""
    import shutil
    root, work = short_tmpdir("os-live-"), short_tmpdir("os-stage-")
    os.chmod(root, 0o755)
    spec = prod_like(root, DOS_SITES, 1)
    cert, key = self_signed(work / "certs", [DOS_SITES[0].onion_host, "*." + DOS_SITES[0].onion_host])
    stage = work / "stage"
    public = render.render_worker(spec)
    write_tree(stage, {**public, **render.worker_secret_files(spec, {"news": (cert.read_text(), key.read_text())})})
    apply = [str(stage / "usr/local/lib/onionstack/apply.sh"), str(stage)]
    done = run(["bash", "-c", 'umask 077; exec bash "$0" "$1"', *apply], timeout=60)
    assert done.returncode == 0, done.stderr
    live_key, live_cert = root / "etc/onionstack/tls/news.key", root / "etc/onionstack/tls/news.crt"
    assert (live_key.stat().st_mode & 0o777, live_key.owner()) == (0o600, "root")
    assert (live_cert.stat().st_mode & 0o777, live_cert.owner()) == (0o644, "root")
    assert live_key.read_text() == key.read_text()
    assert nginx_test(spec).returncode == 0
    shutil.rmtree(stage)
    write_tree(stage, public)  # no secret part
    missing = run(["bash", "-c", 'umask 077; exec bash "$0" "$1"', *apply], timeout=60)
    assert missing.returncode == 1 and "etc/onionstack/tls/news" in missing.stderr
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
