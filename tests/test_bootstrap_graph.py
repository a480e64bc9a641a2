"""The remote-step graph under Pulumi mocks: order, jump host, connection policy, triggers,
secret flags, the balancer config rendered from the workers' outputs, scale out/in."""
from __future__ import annotations

import pytest
import yaml

import mockrun
from nodes.payload import unpack
from nodes.remote import DIAL_ERROR_LIMIT
from nodes.render import content_hash, render_worker
from nodes.roles import BALANCER_CONFIG, BALANCER_STATE_DIR, BALANCER_USER, RoleSpecs
from nodes.scripts import ADDRESS_LINE, parse_instance_addresses
from infra.config import parse_config
from tests.stackmocks import minimal_config, mock_instance_address, prod_config, run

COMMAND = "command:remote:Command"
BALANCER_KEY_DIR = f"{BALANCER_STATE_DIR}/keys"
COPY = "command:remote:CopyToRemote"
THREE_SITES = [
    {"name": "news", "domain": "example.com"},
    {"name": "shop", "domain": "example.org", "blockPaths": ["^/checkout/admin"]},
    {"name": "blog", "domain": "example.net", "originAddress": "192.0.2.10:8443"},
]


def three_site_config(**overrides):
    from mockrun import demo_master_key

    cfg = minimal_config(sites=THREE_SITES, masterKeys={s["name"]: demo_master_key(s["name"]) for s in THREE_SITES},
                         workers=4, availabilityZones=2)
    cfg.update(overrides)
    return cfg


CONFIGS = {"prod": prod_config, "three-sites": three_site_config}


@pytest.fixture(params=sorted(CONFIGS))
def program(request):
    return CONFIGS[request.param](), run(CONFIGS[request.param]())


def workers_of(result):
    return sorted((r for r in result.of_type("onionstack:nodes:WorkerNode")), key=lambda r: int(r.name.split("-")[1]))


def core_files(result, name="balancer-core"):
    return unpack(result.named(name).input("stdin"))


def core_yaml(result):
    return yaml.safe_load(core_files(result)[BALANCER_CONFIG.lstrip("/")].content)


# ---------------------------------------------------------------- order
def test_every_worker_step_comes_before_the_balancer_core(program):
    _, result = program
    core = result.named("balancer-core")
    worker_steps = [result.named(f"{w.name}-tor-nginx") for w in workers_of(result)]
    assert worker_steps, "no worker steps"
    for step in worker_steps:
        assert step.urn in core.dependencies, step.name
    assert result.named("balancer-package").urn in core.dependencies
    assert result.named("balancer-instance").urn in core.dependencies
    # and the package copy precedes the base step that installs it
    assert result.named("balancer-onion-package").urn in result.named("balancer-package").dependencies
    # Nothing on the balancer waits for the database (it is not part of the onion path).
    assert result.named("database-postgres").urn not in core.dependencies


def _step_component(result, resource, type_):
    """The typed step component that parents `resource` (its name: the resource's + "-step")."""
    parent = result.by_urn(resource.parent)
    assert parent.type == type_ and parent.name == f"{resource.name}-step" and not parent.custom, resource.name
    return parent


def test_steps_are_children_of_their_node_and_wait_for_its_instance(program):
    """Each remote resource sits in its typed step component, which is a child of the node
    the step runs on (a worker's drain: of the worker, though it runs on the balancer)."""
    _, result = program
    for w in workers_of(result):
        step = result.named(f"{w.name}-tor-nginx")
        assert _step_component(result, step, "onionstack:nodes:WorkerSetup").parent == w.urn
        assert result.named(f"{w.name}-instance").urn in step.dependencies
        drain = result.named(f"{w.name}-drain")
        assert _step_component(result, drain, "onionstack:nodes:WorkerDrain").parent == w.urn
    db = result.named("database-postgres")
    assert _step_component(result, db, "onionstack:nodes:DatabaseSetup").parent == result.named("database").urn
    for purpose in ("data", "journal", "log"):
        assert result.named(f"database-volumes-{purpose}-attach").urn in db.dependencies
    balancer = result.named("balancer").urn
    assert _step_component(result, result.named("balancer-core"), "onionstack:nodes:BalancerCore").parent == balancer
    package = _step_component(result, result.named("balancer-package"), "onionstack:nodes:BalancerPackage")
    assert package.parent == balancer
    assert result.named("balancer-onion-package").parent == package.urn
    for name in ("balancer-package", "balancer-core", "balancer-onion-package"):
        assert result.named("balancer-instance").urn in result.named(name).dependencies, name


# ---------------------------------------------------------------- connections
def test_workers_and_database_go_through_the_balancer(program):
    _, result = program
    balancer = result.named("balancer-eip").state  # its Elastic IP: every step dials that
    private = [result.named(f"{w.name}-tor-nginx") for w in workers_of(result)] + [result.named("database-postgres")]
    for step in private:
        conn = step.input("connection")
        instance = result.named(step.name.rsplit("-", 2)[0] + "-instance" if step.name.startswith("worker")
                                else "database-instance")
        assert conn["host"] == instance.state["privateIp"], step.name
        assert conn["proxy"]["host"] == balancer["publicIp"], step.name
        assert conn["proxy"]["user"] == conn["user"] == "ubuntu"
        assert conn["dialErrorLimit"] == conn["proxy"]["dialErrorLimit"] == DIAL_ERROR_LIMIT
        assert conn["privateKey"] == conn["proxy"]["privateKey"]
    for name in ("balancer-package", "balancer-core", "balancer-onion-package"):
        conn = result.named(name).input("connection")
        assert conn["host"] == balancer["publicIp"] and "proxy" not in conn, name
        assert conn["dialErrorLimit"] == DIAL_ERROR_LIMIT


def test_the_ssh_key_is_only_ever_a_secret(program):
    cfg, result = program
    private_key = cfg["onionstack:sshPrivateKey"] if "onionstack:sshPrivateKey" in cfg else cfg["sshPrivateKey"]
    for r in result.of_type(COMMAND) + result.of_type(COPY):
        assert mockrun.is_secret(r.inputs["connection"]), r.name
        assert r.input("connection")["privateKey"] == private_key


def test_command_policy(program):
    _, result = program
    commands = result.of_type(COMMAND)
    for c in commands:
        assert c.input("addPreviousOutputInEnv") is False, c.name
        assert c.custom_timeouts["create"] == "30m" and c.custom_timeouts["delete"] == "20m", c.name
        if c.name.endswith("-drain"):
            continue
        assert c.input("update") == c.input("create"), c.name  # idempotent scripts
        assert c.input("create").startswith("sudo -n /bin/bash -c "), c.name
        if c.name != "balancer-package":  # the package install needs no payload
            assert "install-packages.sh" in c.input("create") and "apply.sh" in c.input("create"), c.name
        # No delete: it would have to reach a host that may be terminated already.
        assert c.input("delete") is None, c.name


def test_secret_bearing_steps_log_nothing_and_keep_outputs_secret(program):
    _, result = program
    for name in ("balancer-core", "database-postgres"):
        step = result.named(name)
        assert step.input("logging") == "none", name
        assert {"stdout", "stderr", "stdin"} <= set(step.additional_secret_outputs), name
        assert mockrun.is_secret(step.inputs["stdin"]), name
    for w in workers_of(result):
        step = result.named(f"{w.name}-tor-nginx")
        # Worker steps print the instance addresses, which are for the operator only
        # (docs/sites.md): stdout is secret and not logged; stderr (tool errors) still is.
        # Their stdin carries no secret unless a site serves HTTPS (tests/test_stack_sites.py).
        assert step.input("logging") == "stderr"
        assert not mockrun.is_secret(step.inputs["stdin"])
        assert "stdout" in step.additional_secret_outputs


# ---------------------------------------------------------------- triggers
def test_triggers_are_instance_id_and_content_hash(program):
    cfg, result = program
    from infra.config import load_config  # noqa: F401  (parse the same config the program did)

    config = parse_config({k.split(":", 1)[-1]: v for k, v in cfg.items() if not k.startswith("aws:")})
    expected_hash = content_hash(render_worker(RoleSpecs.of(config).worker))
    for w in workers_of(result):
        step = result.named(f"{w.name}-tor-nginx")
        triggers = step.input("triggers")
        assert triggers[0] == result.named(f"{w.name}-instance").id
        assert triggers[1] == expected_hash
    core = result.named("balancer-core")
    triggers = core.input("triggers")
    assert triggers[0] == result.named("balancer-instance").id
    public = {k: v for k, v in core_files(result).items() if not k.startswith(BALANCER_KEY_DIR.lstrip("/"))}
    assert triggers[1] == content_hash(public)


def test_a_second_run_with_the_same_config_has_identical_triggers_and_inputs():
    """What makes a second `pulumi up` a no-op: every step's inputs are byte-identical."""
    a = mockrun.run_program(prod_config())
    b = mockrun.run_program(prod_config())
    steps_a = {r.name: r for r in a.of_type(COMMAND) + a.of_type(COPY)}
    steps_b = {r.name: r for r in b.of_type(COMMAND) + b.of_type(COPY)}
    assert steps_a.keys() == steps_b.keys() and len(steps_a) == 3 * 2 + 2 + 1 + 1
    for name, step in steps_a.items():
        for key in ("triggers", "stdin", "create", "delete"):
            assert step.input(key) == steps_b[name].input(key), (name, key)
    assert a.named("balancer-onion-package").inputs["source"].text == b.named("balancer-onion-package").inputs["source"].text


# ---------------------------------------------------------------- the balancer config from worker outputs
def test_balancer_config_lists_every_worker_instance_address(program):
    cfg, result = program
    doc = core_yaml(result)
    sites = [s["name"] for s in (cfg.get("onionstack:sites") or cfg["sites"])]
    assert [fe["name"] for fe in doc["frontends"]] == sites
    daemons = ["tor1", "tor2"]
    for fe in doc["frontends"]:
        expected = [mock_instance_address(f"{w.name}-tor-nginx", d, fe["name"]) + ".onion"
                    for w in workers_of(result) for d in daemons]
        assert [i["address"] for i in fe["instances"]] == expected
        assert fe["key_file"] == f"{BALANCER_KEY_DIR}/{fe['name']}.key"
    assert doc["publish"] is True
    assert doc["control"] == {"socket": "/run/onionstack-tor-balancer/control"} and doc["socks_port"] == 9050
    # The stack output carries the same addresses, per worker and site.
    out = result.outputs["instanceAddresses"]
    for fe in doc["frontends"]:
        from_outputs = [a for w in workers_of(result) for a in out[w.name][fe["name"]]]
        assert from_outputs == [i["address"] for i in fe["instances"]]


def test_key_files_are_0600_service_user_and_hold_the_site_keys(program):
    cfg, result = program
    from onion.keys import IdentityKey

    keys = cfg.get("onionstack:masterKeys") or cfg["masterKeys"]
    files = core_files(result)
    for name, key in keys.items():
        f = files[f"{BALANCER_KEY_DIR.lstrip('/')}/{name}.key"]
        assert f.mode == 0o600 and f.owner == BALANCER_USER
        assert f.content == IdentityKey.from_config_string(key).to_tor_secret_key()
    conf = files[BALANCER_CONFIG.lstrip("/")]
    assert conf.mode == 0o640 and conf.owner == BALANCER_USER


def test_the_rendered_balancer_config_loads_in_the_real_balancer_core(tmp_path):
    """The YAML + key files balancer-core installs, as the daemon reads them (paths moved
    into a scratch dir): every frontend gets its site's onion address and all instances."""
    from onion.config import load_config, load_keys

    result = run(prod_config())
    files = core_files(result)
    for rel, f in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content if isinstance(f.content, bytes) else f.content.encode())
        path.chmod(f.mode)
    conf = tmp_path / BALANCER_CONFIG.lstrip("/")
    conf.write_text(conf.read_text().replace("/var/lib/onion-balancer", str(tmp_path / "var/lib/onion-balancer")))
    cfg = load_config(str(conf))
    keys = load_keys(cfg)
    sites = result.outputs["sites"]
    for fe in cfg.frontends:
        assert keys[fe.name].hostname == sites[fe.name]["onionAddress"]
        assert len(fe.instances) == 3 * 2


# ---------------------------------------------------------------- scale out / in
def test_scale_out_adds_workers_and_rerenders_the_balancer():
    three, four = run(prod_config(workers=3)), run(prod_config(workers=4))
    assert "worker-4-tor-nginx" in {r.name for r in four.of_type(COMMAND)}
    y3, y4 = core_yaml(three), core_yaml(four)
    for fe3, fe4 in zip(y3["frontends"], y4["frontends"]):
        new = mock_instance_address("worker-4-tor-nginx", "tor1", fe4["name"]) + ".onion"
        assert [i["address"] for i in fe4["instances"]] == [i["address"] for i in fe3["instances"]] + [
            new, mock_instance_address("worker-4-tor-nginx", "tor2", fe4["name"]) + ".onion"]
    assert three.named("balancer-core").input("triggers")[1] != four.named("balancer-core").input("triggers")[1]
    # Existing workers are untouched: same triggers, same payload.
    for i in (1, 2, 3):
        a, b = three.named(f"worker-{i}-tor-nginx"), four.named(f"worker-{i}-tor-nginx")
        assert a.input("triggers") == b.input("triggers") and a.input("stdin") == b.input("stdin")


def test_scale_in_rerenders_the_balancer_without_the_removed_worker():
    three, two = run(prod_config(workers=3)), run(prod_config(workers=2))
    gone = {mock_instance_address("worker-3-tor-nginx", d, s) + ".onion" for d in ("tor1", "tor2") for s in ("news", "shop")}
    listed = {i["address"] for fe in core_yaml(two)["frontends"] for i in fe["instances"]}
    assert not gone & listed and len(listed) == 2 * 2 * 2
    assert {i["address"] for fe in core_yaml(three)["frontends"] for i in fe["instances"]} >= gone
    assert "worker-3-drain" not in {r.name for r in two.of_type(COMMAND)}


def test_drain_step_graph_and_delete_command(program):
    """Pulumi deletes dependents before their dependencies. The drain depends on the worker's
    instance and step (so it is deleted, i.e. waits, BEFORE they go) and on the balancer's
    instance and core step (so those are still there while it waits); it is a child of the
    worker, so the worker component goes after it."""
    _, result = program
    balancer = result.named("balancer-instance")
    core = result.named("balancer-core")
    for w in workers_of(result):
        drain = result.named(f"{w.name}-drain")
        assert result.by_urn(drain.parent).parent == w.urn
        deps = set(drain.dependencies)
        assert {result.named(f"{w.name}-instance").urn, result.named(f"{w.name}-tor-nginx").urn,
                balancer.urn, core.urn} <= deps
        # It runs on the balancer (no proxy), with the bounded dial of every step: a vanished
        # balancer fails the delete in minutes with a clear error instead of hanging.
        conn = drain.input("connection")
        assert conn["host"] == result.named("balancer-eip").state["publicIp"] and "proxy" not in conn
        assert conn["dialErrorLimit"] == DIAL_ERROR_LIMIT
        text = drain.input("delete")
        # as root: the balancer core's config and status belong to its own user
        assert text.startswith("sudo -n /bin/bash -c ")
        addresses = sorted(a for per_site in result.outputs["instanceAddresses"][w.name].values() for a in per_site)
        assert len(addresses) == 2 * len(result.outputs["sites"])
        for a in addresses:
            assert a.removesuffix(".onion") in text
        # The condition is the onion package's own (`python -m onion drained`, over the
        # status file it writes), bounded by a deadline, warning when it gives up.
        assert "-m onion drained --config /etc/onionstack/balancer.yaml" in text
        assert "deadline=" in text and "WARNING" in text
        # New addresses (a replaced instance) replace the drain, so the old drain's delete
        # waits for the OLD addresses before the old instance is deleted.
        assert "triggers" in drain.replace_on_changes
        assert sorted(drain.input("triggers")[0]) == sorted(a.removesuffix(".onion") for a in addresses)
        # The worker's own step does not depend on the drain (no cycle, and it is kept
        # until the drain is gone).
        assert drain.urn not in result.named(f"{w.name}-tor-nginx").dependencies
    assert all(not c.name.endswith("-drain") for c in result.of_type(COMMAND) if c.urn in core.dependencies)


# ---------------------------------------------------------------- parsing the worker's stdout
def test_parse_instance_addresses():
    a = mock_instance_address("w", "tor1", "news")
    b = mock_instance_address("w", "tor2", "news")
    out = f"noise\n{ADDRESS_LINE} news tor2 {b}.onion\n{ADDRESS_LINE} news tor1 {a}\n"
    assert parse_instance_addresses(out, ["news"], ["tor1", "tor2"]) == {"news": [a, b]}
    with pytest.raises(ValueError, match="no instance address for news/tor2"):
        parse_instance_addresses(f"{ADDRESS_LINE} news tor1 {a}\n", ["news"], ["tor1", "tor2"])
    with pytest.raises(ValueError, match="'abc.onion' for site news daemon tor1: not a v3 onion address"):
        parse_instance_addresses(f"{ADDRESS_LINE} news tor1 abc.onion\n", ["news"], ["tor1"])
    broken = a[:-2] + ("ab" if a[-2:] != "ab" else "cd")  # bad checksum / version
    with pytest.raises(ValueError, match="not a v3 onion address"):
        parse_instance_addresses(f"{ADDRESS_LINE} news tor1 {broken}\n", ["news"], ["tor1"])


def test_minimal_config_without_database_has_no_database_step():
    result = run(minimal_config(database={"enabled": False}))
    names = {r.name for r in result.of_type(COMMAND)}
    assert "database-postgres" not in names and "balancer-core" in names
    assert not result.of_type("random:index/randomPassword:RandomPassword")


# ---------------------------------------------------------------- database
def test_database_step_config_password_and_volumes(program):
    _, result = program
    step = result.named("database-postgres")
    files = unpack(step.input("stdin"))
    from tests.stackmocks import mock_password

    pw = files["etc/onionstack/postgres/password"]
    assert pw.content == mock_password("database-password") and pw.mode == 0o600 and pw.owner == "postgres"
    db_ip = result.named("database-instance").state["privateIp"]
    conf = files["etc/postgresql/16/main/conf.d/onionstack.conf"].content
    assert f"listen_addresses = 'localhost,{db_ip}'" in conf and "password_encryption = 'scram-sha-256'" in conf
    hba = files["etc/postgresql/16/main/pg_hba.conf"].content
    private = sorted(s.input("cidrBlock") for s in result.of_type("aws:ec2/subnet:Subnet")
                     if s.input("tags")["tier"] == "private")
    remote = [line.split() for line in hba.splitlines() if line.startswith("hostssl")]
    assert sorted(line[3] for line in remote) == private and private
    assert all(line[1:3] == ["onionstack", "onionstack"] and line[4] == "scram-sha-256" for line in remote)
    assert "trust" not in hba and "md5" not in hba
    # The volumes are the stack's own, found by their EBS ids (apply.sh in the payload).
    apply = files["usr/local/lib/onionstack/apply.sh"].content
    for v in result.of_type("aws:ebs/volume:Volume"):
        assert v.id in apply
    # triggers: instance, the public files, the script; never the password
    triggers = step.input("triggers")
    assert triggers[0] == result.named("database-instance").id
    public = {k: v for k, v in files.items()  # the secret files are staged, not rendered
              if k not in ("etc/onionstack/postgres/password", "etc/onionstack/postgres/server.key")}
    assert triggers[1] == content_hash(public)
    assert not any(pw.content in str(t) for t in triggers)


@pytest.mark.parametrize("site,message", [
    ({"name": "news", "domain": "example.com", "blockPaths": ["wp-admin"]},
     "onionstack:sites[0] (news): the node templates refuse it: sites[news].block_paths: 'wp-admin'"),
    ({"name": "news", "domain": "example.com", "originAddress": "[2001:db8::1]:443"},
     "onionstack:sites[0] (news): the node templates refuse it: sites[news].origin_address"),
])
def test_config_the_templates_cannot_render_stops_before_any_resource(site, message):
    from infra.config import ConfigError

    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(sites=[site]))
    assert str(info.value).startswith(message)
    assert info.value.registered_resources == []
