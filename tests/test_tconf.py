"""`python -m onion import-tconf`: EOTK's demo configurations (retyped in
tests/fixtures/eotk/) to onionstack stack config, keys, and precise errors."""
from __future__ import annotations

import io
import shutil
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from onion import tconf
from onion.__main__ import main as onion_main
from onion.keys import IdentityKey
from onion.tconf import TconfError

FIXTURES = Path(__file__).parent / "fixtures" / "eotk"
REPO = Path(__file__).resolve().parent.parent


def run_import(path: Path, *extra: str) -> tuple[int, str, str]:
    """Run the import into a new stack file; returns (rc, the file's text, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stack_file = Path(tempfile.mkdtemp(prefix="tconf-")) / "Pulumi.test.yaml"
    parser = __import__("onion.__main__", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["import-tconf", str(path), "--out", str(stack_file), *extra])
    rc = tconf.run(args, out=out, err=err)
    assert out.getvalue() == ""  # the config went to the file
    return rc, stack_file.read_text(), err.getvalue()


def sites_of(stdout: str) -> list[dict]:
    doc = yaml.safe_load(stdout)
    assert list(doc) == ["config"]
    return doc["config"]["onionstack:sites"]


def assert_private_dir(d: Path) -> IdentityKey:
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    return IdentityKey.from_hs_dir(d)


def secrets_in(keys_dir: Path) -> list[str]:
    return [IdentityKey.from_hs_dir(d).to_config_string().split(":", 1)[1] for d in keys_dir.iterdir()]


# ---- EOTK's demo configurations -------------------------------------------------------------

def test_example_demo(tmp_path):
    keys = tmp_path / "keys"
    rc, out, err = run_import(FIXTURES / "example.tconf", "--keys-dir", str(keys), "--stack", "prod")
    assert rc == 0
    sites = sites_of(out)
    assert [(s["name"], s["domain"]) for s in sites] == [
        ("foo-local", "foo.local"), ("bar-local", "bar.local"), ("example-com", "example.com"),
        ("example-org", "example.org"), ("example-net", "example.net")]
    assert "# onionstack stack config for Pulumi.prod.yaml" in out
    addresses = set()
    for s in sites:
        key = assert_private_dir(keys / s["name"])
        addresses.add(key.address)
        assert f"#   {s['name']}: {s['domain']} -> {key.hostname} (new key)" in out
        assert (f"python -m onion import {keys / s['name']} | pulumi config set --stack prod --secret "
                f"--path masterKeys.{s['name']}") in err
    assert len(addresses) == 5                       # five distinct new onions
    fb = "facebookwkhpilnemxj7asaniu7vnjjbiltxjqhye3mhbshg7kx5tfyd.onion"
    assert f"foreignmap {fb} facebook.com: converted to foreignOnions of every site" in err
    for s in sites:
        # EOTK serves every onion over HTTPS (force_https by default) and rewrites foreignmaps everywhere
        assert s["https"] == "selfSigned" and "httpRedirect" not in s
        assert s["foreignOnions"] == {"facebook.com": fb}
    assert "force_https (EOTK's default, 1): every site serves HTTPS" in err
    assert "EOTK projects hardexample, softexample become sites of one stack" in err
    for secret in secrets_in(keys):                  # no private key on stdout or stderr
        assert secret not in out and secret not in err


def test_wikipedia_demo_blocks_and_unsupported_settings(tmp_path):
    keys = tmp_path / "keys"
    rc, out, err = run_import(FIXTURES / "wikipedia.tconf", "--keys-dir", str(keys))
    assert rc == 0
    sites = sites_of(out)
    assert [s["domain"] for s in sites] == ["mediawiki.org", "wikimedia.org", "wikipedia.org", "wiktionary.org"]
    for s in sites:
        # `set block_host_re ^(login|donate)\\.` is a leftmost-label pattern: names per site
        assert s["blockHosts"] == [f"login.{s['domain']}", f"donate.{s['domain']}"]
        # block_path_re values are case-insensitive searches in EOTK (`$uri ~* "…"`)
        assert s["blockPaths"] == ["^(?i:.*(?:/User:))",
                                   r"^(?i:.*(?:/Special:(UserLogin|(Create|Merge)Account|RenameRequest)\b))"]
    src = str(FIXTURES / "wikipedia.tconf")
    for line, name in ((5, "preserve_csv"), (15, "nginx_cache_seconds"),
                       (19, "suppress_methods_except_get"), (31, "block_param_re"),
                       (35, "user_agent_whitelist_re")):
        assert f"note: {src}:{line}: set {name}: no onionstack equivalent; ignored" in err
    assert f"note: {src}:10: set nginx_resolver: not supported: workers resolve origins through the VPC " \
           "resolver only" in err
    assert f"{src}:26: set block_path_re /User:: converted to blockPaths ^(?i:.*(?:/User:))" in err
    assert "converted to blockHosts {login,donate}.<domain> of every site" in err
    assert f"{src}:46: subdomains m of wikipedia.org: onionstack serves every subdomain" in err


def test_tpo_and_human_rights_demos(tmp_path):
    rc, out, err = run_import(FIXTURES / "tpo.tconf", "--keys-dir", str(tmp_path / "k1"))
    assert rc == 0
    assert sites_of(out) == [{"name": "torproject-org", "domain": "torproject.org", "https": "selfSigned"}]
    assert "set preserve_csv: no onionstack equivalent" in err
    for name, reason in (("nginx_resolver", "the VPC resolver"), ("log_separate", "no access log"),
                         ("ssl_mkcert", "mkcert's certificates come from a local development CA")):
        assert f"set {name}" in err and reason in err
    rc, out, err = run_import(FIXTURES / "human-rights.tconf", "--keys-dir", str(tmp_path / "k2"))
    assert rc == 0
    assert [s["name"] for s in sites_of(out)] == ["aclu-org", "liberty-human-rights-org-uk"]


def test_printed_command_yields_the_stack_key(tmp_path, capsys):
    """The left half of each printed pipeline prints the key the stack config takes."""
    keys = tmp_path / "keys"
    run_import(FIXTURES / "human-rights.tconf", "--keys-dir", str(keys))
    assert onion_main(["import", str(keys / "aclu-org")]) == 0
    printed = capsys.readouterr().out.strip()
    assert IdentityKey.from_config_string(printed).address == IdentityKey.from_hs_dir(keys / "aclu-org").address


def test_cli_entry_point(tmp_path):
    keys = tmp_path / "keys"
    proc = subprocess.run([sys.executable, "-m", "onion", "import-tconf", str(FIXTURES / "tpo.tconf"),
                           "--keys-dir", str(keys), "--stack", "eotk"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    written = (tmp_path / "Pulumi.eotk.yaml").read_text()
    assert sites_of(written)[0]["domain"] == "torproject.org"
    assert "ED25519-V3:" not in written + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "onion", "import-tconf", str(FIXTURES / "tpo.tconf"),
                           "--out", str(tmp_path / "Pulumi.x.yaml")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert f"onion import-tconf: {FIXTURES / 'tpo.tconf'}:16: %NEW_V3_ONION% needs --keys-dir DIR" in proc.stderr
    assert proc.stdout == ""


def test_rerun_reuses_generated_keys(tmp_path):
    keys = tmp_path / "keys"
    _, first, _ = run_import(FIXTURES / "human-rights.tconf", "--keys-dir", str(keys))
    before = {d.name: IdentityKey.from_hs_dir(d).address for d in keys.iterdir()}
    rc, second, err = run_import(FIXTURES / "human-rights.tconf", "--keys-dir", str(keys))
    assert rc == 0
    assert {d.name: IdentityKey.from_hs_dir(d).address for d in keys.iterdir()} == before
    assert "reusing the key already in" in err
    assert yaml.safe_load(first) == yaml.safe_load(second)


# ---- existing onions and softmap settings -------------------------------------------------

def eotk_secret(secrets: Path) -> IdentityKey:
    """A key as EOTK keeps it: secrets.d/<onion>.v3sec.key and .v3pub.key."""
    key = IdentityKey.generate()
    secrets.mkdir(exist_ok=True)
    (secrets / f"{key.address}.v3sec.key").write_bytes(key.to_tor_secret_key())
    (secrets / f"{key.address}.v3pub.key").write_bytes(key.to_tor_public_key())
    return key


def test_softmap_with_existing_onions_from_secrets_d(tmp_path):
    secrets = tmp_path / "secrets.d"
    news, shop = eotk_secret(secrets), eotk_secret(secrets)
    (tmp_path / "eotk-workers.conf").write_text("# workers\nwolfgang\nwilliam\nwalter\n")
    conf = tmp_path / "site.tconf"
    conf.write_text(f"""set softmap_tor_workers 4
set tor_intros_per_daemon 5
set project shop
softmap {news.hostname} news.example \\
    www m
softmap {shop.address} shop.example
set block_host {"login." + news.hostname} ads.shop.example
set block_path /wp-admin/
set block_path_re ^/private\\\\.d/
""")
    # without --keys-dir the commands read EOTK's own key files
    rc, out, err = run_import(conf)
    assert rc == 0
    doc = yaml.safe_load(out)["config"]
    assert doc["onionstack:torDaemonsPerWorker"] == 4
    assert doc["onionstack:introPointsPerDaemon"] == 5
    assert doc["onionstack:workers"] == 3
    s_news, s_shop = doc["onionstack:sites"]
    assert s_news == {"name": "news-example", "domain": "news.example", "blockHosts": ["login.news.example"],
                      "blockPaths": ["^/wp-admin/$", r"^(?i:/private\.d/)"], "https": "selfSigned"}
    assert s_shop["blockHosts"] == ["ads.shop.example"]
    assert f"python -m onion import {secrets / (news.address + '.v3sec.key')} | pulumi config set --secret " \
           f"--path masterKeys.news-example" in err
    assert f"#   news-example: news.example -> {news.hostname}\n" in out
    assert "subdomains www m of news.example" in err

    # with --keys-dir they are copied into one hidden-service directory per site
    keys = tmp_path / "keys"
    rc, out, err = run_import(conf, "--keys-dir", str(keys))
    assert rc == 0
    assert assert_private_dir(keys / "news-example").address == news.address
    assert assert_private_dir(keys / "shop-example").address == shop.address
    assert f"python -m onion import {keys / 'shop-example'} |" in err


def test_existing_onion_in_keys_dir_hs_layout(tmp_path):
    keys = tmp_path / "keys"
    key = IdentityKey.generate()
    key.write_hs_dir(keys / "old-name")          # a tor HiddenServiceDir, found by its hostname file
    conf = tmp_path / "a.tconf"
    conf.write_text(f"hardmap {key.address} example.com\n")
    rc, out, err = run_import(conf, "--keys-dir", str(keys), "--secrets-dir", str(tmp_path / "none"))
    assert rc == 0
    assert IdentityKey.from_hs_dir(keys / "example-com").address == key.address


def test_missing_key_is_an_error(tmp_path):
    key = IdentityKey.generate()
    conf = tmp_path / "a.tconf"
    conf.write_text(f"# comment\nhardmap {key.address} example.com\n")
    with pytest.raises(TconfError, match=rf"a.tconf:2: no key for {key.address}.onion in .*secrets.d.*--secrets-dir"):
        run_import(conf, "--keys-dir", str(tmp_path / "keys"))
    assert not (tmp_path / "keys" / "example-com").exists()


def test_key_file_for_another_onion_is_refused(tmp_path):
    secrets = tmp_path / "secrets.d"
    a, b = eotk_secret(secrets), IdentityKey.generate()
    os.rename(secrets / f"{a.address}.v3sec.key", secrets / f"{b.address}.v3sec.key")
    conf = tmp_path / "a.tconf"
    conf.write_text(f"hardmap {b.address} example.com\n")
    with pytest.raises(ValueError, match=f"holds the key of {a.hostname}, not {b.address}.onion"):
        run_import(conf)


# ---- the line language -----------------------------------------------------------------------

def test_line_joining_and_comments():
    text = "set a one \\\n   two\\\n three\n# a comment \\\nset swallowed x\nset b ends\\\\\nset c 3\n"
    lines = tconf.logical_lines(text, "t")
    # odd backslashes join (numbered by the first line), a comment swallows its continuation,
    # an even number is literal
    assert [(l.number, l.words) for l in lines] == [
        (1, ("set", "a", "one", "two", "three")), (6, ("set", "b", "ends\\\\")), (7, ("set", "c", "3"))]


def test_line_joining_is_linear_in_trailing_backslashes():
    """`re.search(r"(\\+)$", line)` on a long run of backslashes not at the end of the
    line retried from every position: quadratic (20 000 took 1.4 s, 300 000 would take
    minutes), and a line continued over many physical lines was copied at each one. Run
    in a child process with a deadline so a regression fails, not hangs."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("from onion import tconf\n"
              "n = 300_000\n"
              "lines = tconf.logical_lines('set x ' + '\\\\' * n + 'y\\n', 't')\n"
              "assert lines[0].words[2] == '\\\\' * n + 'y'\n"
              "odd = tconf.logical_lines('set x ' + '\\\\' * (2 * n + 1) + '\\nz\\n', 't')\n"
              "assert odd[0].words[-1] == 'z' and len(odd) == 1\n"
              # one logical line over 200 000 physical ones: re-joining copied it each time
              "long = tconf.logical_lines('set x ' + 'ab \\\\\\n' * 200_000 + 'z\\n', 't')\n"
              "assert len(long[0].words) == 200_003\n"
              "print('ok')\n")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=repo)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("text, message", [
    ("hardmap %NEW_V3_ONION% example.com\nfrobnicate x\n", r"t.tconf:2: unknown directive 'frobnicate'"),
    ("set xy \\\n  y\nhardmap %NEW_V3_ONION%\n", r"t.tconf:3: hardmap needs ONION DOMAIN"),
    ("hardmap %NEW_V3_ONION% example.com \\\n", r"t.tconf:1: the last line ends in a backslash"),
    ("hardmap fbcebookwkhpilnemxj7asaniu7vnjjbiltxjqhye3mhbshg7kx5tfyd example.com\n",
     r"t.tconf:1: onion address .* wrong checksum"),
    ("hardmap abcdefghijklmnop example.com\n", r"t.tconf:1: .*16 characters.*v2"),
    ("hardmap %NEW_ONION% example.com\n", r"t.tconf:1: %NEW_ONION% is retired EOTK syntax"),
    ("set x %HOME%\nhardmap %NEW_V3_ONION% a.com\n", r"t.tconf:1: %HOME% expands an environment variable"),
    ("hardmap %NEW_V3_ONION% a.com\nsoftmap %NEW_V3_ONION% b.com\n",
     r"t.tconf:2: softmap in project 'default', which already has hardmap lines"),
    ("hardmap %NEW_V3_ONION% a.com\nhardmap %NEW_V3_ONION% A.com\n", r"t.tconf:2: a.com is already mapped on line 1"),
    ("hardmap %NEW_V3_ONION% not_a_domain\n", r"t.tconf:1: 'not_a_domain' is not a DNS name"),
    ("hardmap %NEW_V3_ONION% a.com bad_sub\n", r"t.tconf:1: subdomain 'bad_sub' of a.com"),
    ("foreignmap %NEW_V3_ONION% a.com\nhardmap %NEW_V3_ONION% b.com\n", r"t.tconf:1: %NEW_V3_ONION% makes no sense"),
    ("set project\nhardmap %NEW_V3_ONION% b.com\n", r"t.tconf:1: 'set project' needs a project name"),
    ("set 9lives x\nhardmap %NEW_V3_ONION% b.com\n", r"t.tconf:1: '9lives' is not a variable name"),
    ("# nothing\nset project x\n", r"t.tconf: no hardmap or softmap line"),
    ("set tor_intros_per_daemon three\nhardmap %NEW_V3_ONION% b.com\n",
     r"t.tconf:1: set tor_intros_per_daemon 'three' must be a whole number .*1..20"),
    ("set softmap_tor_workers 9\nsoftmap %NEW_V3_ONION% b.com\n",
     r"t.tconf:1: set softmap_tor_workers 9 is out of range: onionstack's torDaemonsPerWorker takes 1..8"),
    ("\n\nset block_path_re ^/(unclosed\nhardmap %NEW_V3_ONION% b.com\n",
     r"t.tconf:3: set block_path_re '\^/\(unclosed' is not a valid regular expression"),
])
def test_bad_input_names_the_line(tmp_path, text, message):
    conf = tmp_path / "t.tconf"
    conf.write_text(text)
    with pytest.raises(TconfError, match=message):
        run_import(conf, "--keys-dir", str(tmp_path / "keys"))
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_unknown_setting_is_reported_as_typo(tmp_path):
    conf = tmp_path / "t.tconf"
    conf.write_text("set nginx_resolvr 10.0.0.2\nhardmap %NEW_V3_ONION% b.com\n")
    rc, out, err = run_import(conf, "--keys-dir", str(tmp_path / "k"))
    assert rc == 0
    assert "t.tconf:1: set nginx_resolvr: not an EOTK or Onionspray setting (a typo?); ignored" in err


def test_site_names_fit_the_stack_rule():
    taken: set[str] = set()
    names = [tconf.site_name(d, taken) for d in
             ("example.com", "example-com.net", "example.com.", "3com.com",
              "a-very-long-subdomain-name.of-a-very-long-domain.example")]
    assert names[0] == "example-com" and names[1] == "example-com-net"
    assert names[2] == "example-com-2"             # unique
    assert names[3] == "s-3com-com"                # starts with a letter
    assert all(tconf.SITE_NAME_RE.match(n) and len(n) <= 31 for n in names)


def test_onionstack_limits_match_the_stack_config():
    """The name rule the importer enforces is the stack config's."""
    from infra import config as stack_config
    assert tconf.SITE_NAME_RE.pattern == stack_config.SITE_NAME_RE.pattern


def test_converted_sites_fit_the_node_renderer(tmp_path):
    """The node renderer (nodes/render.py) accepts the converted sites and block lists;
    its blockPaths rule (URL path prefixes) is the one the importer converts to."""
    from nodes import render
    secrets = tmp_path / "secrets.d"
    key = eotk_secret(secrets)
    conf = tmp_path / "site.tconf"
    conf.write_text(f"set block_host login.example.com\nset block_path /wp-admin/ /xmlrpc.php\n"
                    f"softmap {key.address} example.com\n")
    for fixture in (FIXTURES / "wikipedia.tconf", FIXTURES / "example.tconf", conf):
        keys = tmp_path / fixture.stem
        rc, out, _ = run_import(fixture, "--keys-dir", str(keys))
        assert rc == 0
        for s in sites_of(out):
            render.SiteSpec(name=s["name"], domain=s["domain"],
                            onion_address=IdentityKey.from_hs_dir(keys / s["name"]).address,
                            block_hosts=tuple(s.get("blockHosts", ())),
                            block_paths=tuple(s.get("blockPaths", ())))
    assert sites_of(out)[0]["blockPaths"] == ["^/wp-admin/$", r"^/xmlrpc\.php$"]


@pytest.mark.parametrize("fixture", ["example.tconf", "wikipedia.tconf", "tpo.tconf", "human-rights.tconf"])
def test_imported_config_is_accepted_by_the_stack(tmp_path, fixture, capsys):
    """What import-tconf prints, plus the keys its commands store and the settings it says
    are still to set, is a config the stack's own parser (infra/config.py) accepts."""
    from infra.config import parse_config
    from mockrun import demo_ssh_key_pair
    keys = tmp_path / "keys"
    rc, out, err = run_import(FIXTURES / fixture, "--keys-dir", str(keys))
    assert rc == 0
    raw = {k.split(":", 1)[1]: v for k, v in yaml.safe_load(out)["config"].items()}
    raw["masterKeys"] = {}
    for s in raw["sites"]:
        assert onion_main(["import", str(keys / s["name"])]) == 0        # as the printed command does
        raw["masterKeys"][s["name"]] = capsys.readouterr().out.strip()
    raw["sshPublicKey"], raw["sshPrivateKey"] = demo_ssh_key_pair()
    raw["adminCidrs"] = ["198.51.100.7/32"]
    cfg = parse_config(raw)
    assert [(s.name, s.domain, s.onion_address) for s in cfg.sites] == [
        (s["name"], s["domain"], IdentityKey.from_hs_dir(keys / s["name"]).hostname) for s in raw["sites"]]
    assert [list(s.block_hosts) for s in cfg.sites] == [s.get("blockHosts", []) for s in raw["sites"]]


@pytest.mark.tools
def test_converted_block_paths_behave_like_eotk_in_real_nginx(tmp_path):
    """Serve the converted blockPaths from a real nginx on 127.0.0.1, written the way the
    worker template writes them, and check which requests get 403: EOTK's block_path is
    an exact match, block_path_re a case-insensitive search."""
    import socket
    import time
    import urllib.error
    import urllib.request
    from nodes.render import nginx_quote
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp_path / "site.tconf"
    conf.write_text("set block_path /wp-admin/ /xmlrpc.php\n"
                    "set block_path_re /User: ^/private\\\\.d/ \\\\.(sql|gz)$\n"
                    "hardmap %NEW_V3_ONION% example.com\n")
    rc, out, _ = run_import(conf, "--keys-dir", str(tmp_path / "keys"))
    paths = sites_of(out)[0]["blockPaths"]
    assert len(paths) == 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    locations = "\n".join(
        f"location {'~ ' + nginx_quote(p) if p.startswith('^') else '^~ ' + p} {{ return 403; }}" for p in paths)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log;
events {{ worker_connections 16; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port};
        {locations}
        location / {{ return 200 "ok"; }}
    }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        deadline = time.monotonic() + 10
        while True:
            try:
                status("/")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        expect = {
            "/": 200, "/wp-admin/": 403, "/wp-admin/x": 200, "/xmlrpc.php": 403, "/xmlrpcXphp": 200,
            "/wiki/User:Alice": 403, "/wiki/user:alice": 403, "/wiki/Users": 200,
            "/private.d/x": 403, "/PRIVATE.D/x": 403, "/privateXd/x": 200, "/a/private.d/": 200,
            "/dump.SQL": 403, "/dump.gz": 403, "/dump.sqlite": 200,
        }
        assert {p: status(p) for p in expect} == expect
    finally:
        proc.terminate()
        proc.wait(timeout=10)
