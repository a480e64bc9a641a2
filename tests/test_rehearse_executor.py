"""The rehearsal's pulumi-command test double (lab/rehearse/executor.py) against the SDK's
own resource shapes: small programs with real `remote.Command` / `CopyToRemote` under
Pulumi's mocks, the registrations routed to the Provider, a recording transport in place
of SSH. No network."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pulumi
import pytest
from pulumi_command import remote

from lab.rehearse.executor import Connection, DialError, Provider, StepError
from lab.rehearse.program import evaluate

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq0exampleexampleexampleexampleexample host"


class FakeSession:
    def __init__(self, transport, conn):
        self.transport, self.conn = transport, conn

    def run(self, command, stdin, env, timeout):
        self.transport.calls.append(("run", self.conn.host, command, stdin, dict(env)))
        for prefix, (rc, out, err) in self.transport.replies.items():
            if command.startswith(prefix):
                return rc, out, err
        return 0, f"ran {command}\n", ""

    def copy(self, content, remote_path, timeout):
        self.transport.calls.append(("copy", self.conn.host, remote_path, content))

    def close(self):
        pass


class FakeTransport:
    def __init__(self):
        self.calls: list[tuple] = []
        self.connections: list[Connection] = []
        self.replies: dict[str, tuple[int, str, str]] = {}
        self.dial_failures = 0  # the next N dials fail

    def dial(self, conn):
        self.connections.append(conn)
        if self.dial_failures:
            self.dial_failures -= 1
            raise DialError("Host key verification failed.")
        return FakeSession(self, conn)

    def ran(self):
        return [c[2] for c in self.calls if c[0] == "run"]


def conn(host: str, proxy: str | None = None, **kw) -> remote.ConnectionArgs:
    key = pulumi.Output.secret(KEY)
    return remote.ConnectionArgs(
        host=host, user="ubuntu", private_key=key, host_key=HOST_KEY, dial_error_limit=kw.get("limit", 3),
        per_dial_timeout=7,
        proxy=remote.ProxyConnectionArgs(host=proxy, user="ubuntu", private_key=key, dial_error_limit=3)
        if proxy else None)


def run(tmp_path: Path, program, transport: FakeTransport, **kw) -> Provider:
    provider = Provider(tmp_path / "executor.json", transport, log=kw.pop("log", lambda line: None),
                        max_step_seconds=kw.pop("max_step_seconds", 60))
    evaluate({}, provider, program=program)
    provider.finish()
    return provider


def two_steps(first_trigger: str = "t1", second_create: str = "second", with_second: bool = True,
              update: str | None = None):
    """first (on the jump host) prints a line; second (through it) reads that stdout."""
    def program():
        a = remote.Command("first", connection=conn("10.0.0.1"), create="echo first", update=update,
                           delete="echo bye-first", triggers=[first_trigger], add_previous_output_in_env=False)
        if with_second:
            remote.Command("second", connection=conn("10.0.1.5", proxy="10.0.0.1"),
                           create=a.stdout.apply(lambda out: f"{second_create} <{out}>"),
                           stdin=pulumi.Output.secret("top secret"),
                           logging=remote.Logging.NONE, opts=pulumi.ResourceOptions(depends_on=[a]))
    return program


def test_connection_as_the_sdk_sends_it(tmp_path):
    t = FakeTransport()
    run(tmp_path, two_steps(), t)
    c = next(c for c in t.connections if c.proxy)
    # camelCased, secret-wrapped, numbers as floats in the registration: all mapped back
    assert (c.host, c.user, c.private_key, c.host_key, c.dial_error_limit, c.per_dial_timeout, c.port) == \
        ("10.0.1.5", "ubuntu", KEY, HOST_KEY, 3, 7, 22)
    assert (c.proxy.host, c.proxy.private_key, c.proxy.host_key, c.proxy.per_dial_timeout) == \
        ("10.0.0.1", KEY, None, 15)  # the schema's default per-dial timeout


def test_create_in_dependency_order_with_stdout_flowing_downstream(tmp_path):
    t = FakeTransport()
    p = run(tmp_path, two_steps(), t)
    assert t.ran() == ["echo first", "second <ran echo first>"]  # one trailing newline dropped
    second = next(c for c in t.calls if c[2].startswith("second"))
    assert second[3] == "top secret"  # stdin, revealed from its secret marker
    assert [(o.kind, o.name) for o in p.ops] == [("create", "first"), ("create", "second")]
    # The state keeps digests of the inputs; a secret stdin only where a delete needs it
    # (Pulumi's state keeps it, encrypted, for the delete).
    assert stat.S_IMODE((tmp_path / "executor.json").stat().st_mode) == 0o600
    assert "top secret" not in (tmp_path / "executor.json").read_text()


def test_second_run_runs_nothing_and_still_feeds_stdout(tmp_path):
    run(tmp_path, two_steps(), FakeTransport())
    t = FakeTransport()
    p = run(tmp_path, two_steps(), t)
    assert t.calls == [] and [o.kind for o in p.ops] == ["same", "same"]


def test_changed_trigger_replaces_and_deletes_the_old_one_last(tmp_path):
    run(tmp_path, two_steps(), FakeTransport())
    t = FakeTransport()
    p = run(tmp_path, two_steps(first_trigger="t2"), t)
    # first is created anew; second's create text did not change: nothing to do there;
    # the replaced first's delete runs after every create and update
    assert t.ran() == ["echo first", "echo bye-first"]
    assert [(o.kind, o.name) for o in p.changed()] == [("replace", "first"), ("delete", "first")]


def test_other_input_changes_run_update_or_create(tmp_path):
    run(tmp_path, two_steps(), FakeTransport())
    t = FakeTransport()
    run(tmp_path, two_steps(second_create="again"), t)
    assert t.ran() == ["again <ran echo first>"]
    t = FakeTransport()
    run(tmp_path, two_steps(second_create="again", update="echo updating"), t)
    # `update` given: it runs instead of create; its new stdout changes second's command
    assert t.ran() == ["echo updating", "again <ran echo updating>"]


def test_removed_steps_are_deleted_dependents_first(tmp_path):
    def both():
        a = remote.Command("a", connection=conn("10.0.0.1"), create="echo a", delete="echo del-a")
        remote.Command("b", connection=conn("10.0.0.1"), create="echo b", delete="echo del-b",
                       opts=pulumi.ResourceOptions(depends_on=[a]))

    def none():
        pass

    run(tmp_path, both, FakeTransport())
    t = FakeTransport()
    run(tmp_path, none, t)
    assert t.ran() == ["echo del-b", "echo del-a"]
    assert json.loads((tmp_path / "executor.json").read_text()) == {}


def test_a_failed_create_fails_the_run_and_runs_again_next_time(tmp_path):
    t = FakeTransport()
    t.replies["echo first"] = (3, "out\n", "boom\n")
    with pytest.raises(Exception, match="first: exit 3"):
        run(tmp_path, two_steps(with_second=False), t)
    t = FakeTransport()
    p = run(tmp_path, two_steps(with_second=False), t)
    assert t.ran() == ["echo first"] and p.ops[0].kind == "update"


def test_secret_logging_keeps_output_out_of_logs_and_errors(tmp_path):
    lines: list[str] = []
    t = FakeTransport()
    t.replies["second"] = (1, "SECRET-OUT\n", "SECRET-ERR\n")
    with pytest.raises(Exception) as err:
        run(tmp_path, two_steps(), t, log=lines.append)
    assert "SECRET" not in str(err.value) and not any("SECRET" in line for line in lines)
    assert any("ran echo first" in line for line in lines)  # logging on: shown
    secret_log = tmp_path / "secret-steps.log"
    assert "SECRET-OUT" in secret_log.read_text() and stat.S_IMODE(secret_log.stat().st_mode) == 0o600


def test_dial_errors_are_retried_up_to_the_limit_then_nothing_runs(tmp_path):
    t = FakeTransport()
    t.dial_failures = 2
    run(tmp_path, two_steps(with_second=False), t)
    assert len(t.connections) == 3 and t.ran() == ["echo first"]  # 2 failures, then it worked
    t = FakeTransport()
    t.dial_failures = 99
    (tmp_path / "fresh").mkdir()
    with pytest.raises(Exception, match="after 4 failed attempts: Host key verification failed"):
        run(tmp_path / "fresh", two_steps(with_second=False), t)
    assert len(t.connections) == 4 and t.calls == []  # limit 3: 1 + 3 retries, nothing sent


def test_unlimited_dials_stop_at_the_step_timeout(tmp_path):
    def program():
        remote.Command("a", connection=conn("10.0.0.1", limit=-1), create="echo a")

    t = FakeTransport()
    t.dial_failures = 10**6
    with pytest.raises(Exception, match="failed attempts"):
        run(tmp_path, program, t, max_step_seconds=1.5)
    assert 3 <= len(t.connections) < 20 and t.calls == []


def test_previous_output_in_env_only_when_asked(tmp_path):
    def program():
        remote.Command("a", connection=conn("10.0.0.1"), create="echo a", triggers=["x"],
                       environment={"GREETING": "hi"})

    run(tmp_path, program, FakeTransport())
    t = FakeTransport()

    def changed():
        remote.Command("a", connection=conn("10.0.0.1"), create="echo a2", triggers=["x"],
                       environment={"GREETING": "hi"})

    run(tmp_path, changed, t)
    # addPreviousOutputInEnv defaults to true: the previous stdout reaches the update
    assert t.calls[0][4] == {"GREETING": "hi", "PULUMI_COMMAND_STDOUT": "ran echo a"}


def test_copy_to_remote_copies_text_and_only_again_when_it_changed(tmp_path):
    def program(text="payload", trigger="1"):
        def p():
            remote.CopyToRemote("copy", connection=conn("10.0.0.1"), source=pulumi.StringAsset(text),
                                remote_path="/home/ubuntu/x.b64", triggers=[trigger])
        return p

    t = FakeTransport()
    run(tmp_path, program(), t)
    assert t.calls == [("copy", "10.0.0.1", "/home/ubuntu/x.b64", b"payload")]
    t = FakeTransport()
    run(tmp_path, program(), t)
    assert t.calls == []
    t = FakeTransport()
    run(tmp_path, program(text="new"), t)
    assert t.calls == [("copy", "10.0.0.1", "/home/ubuntu/x.b64", b"new")]
