"""`python -m onion drained`: the scale-in condition, judged on status dicts that the
balancer core's own status code produces (onion.balancer.Balancer.status, driven by the
fake tor of tests/test_balancer_core.py), through a real config reload that drops a worker."""
from __future__ import annotations

import os
import time

import pytest

from onion.__main__ import main
from onion.balancer import Balancer
from onion.config import load_config, load_keys
from onion.drain import not_drained_reason
from onion.keys import IdentityKey
from onion.status import write_status
from tests.test_balancer_core import Clock, FakeControl, FakeProtocol, confirm_all, content


class Site:
    """A balancer for one frontend over two workers' instances (a, b), its config on disk."""

    def __init__(self, tmp_path, *, publish: bool = True):
        self.front, self.a, self.b = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
        self.key = tmp_path / "front.key"
        self.key.write_bytes(self.front.to_tor_secret_key())
        os.chmod(self.key, 0o600)
        self.path = tmp_path / "balancer.yaml"
        self.state = tmp_path / "state"
        self.publish = publish
        self.write([self.a, self.b])
        cfg = load_config(str(self.path))
        self.control, self.clock = FakeControl(), Clock(time.time())
        self.bal = Balancer(cfg, load_keys(cfg), self.control, FakeProtocol(), None, clock=self.clock)

    def write(self, instances) -> None:
        lines = "".join(f"      - address: {i.address}.onion\n" for i in instances)
        self.path.write_text(f"publish: {'true' if self.publish else 'false'}\nstate_dir: {self.state}\n"
                             f"probe: false\nfrontends:\n  - name: news\n    key_file: {self.key}\n"
                             f"    instances:\n{lines}")

    def publish_both(self) -> None:
        self.bal.tick()
        self.bal.handle(content(self.a.address, 100, 1, ["a1", "a2"]))
        self.bal.handle(content(self.b.address, 100, 1, ["b1", "b2"]))
        self.bal.tick()
        confirm_all(self.bal, self.control)

    def rerender_without_b(self) -> float:
        """What the balancer-core step does on scale-in: a new config, then the core reloads."""
        self.clock.t += 5
        self.write([self.a])
        mtime = self.clock.t
        os.utime(self.path, (mtime, mtime))
        self.clock.t += 1
        self.bal.reload_requested = True  # what SIGHUP (or the step's restart) leads to
        self.bal.step()
        return mtime

    def settle(self) -> None:
        """Let the core send every upload it plans and every HSDir confirm it."""
        for _ in range(5):
            self.clock.t += 1
            self.bal.tick()
            confirm_all(self.bal, self.control)

    def reason(self, *addresses, config_mtime=None):
        return not_drained_reason(self.bal.status(), addresses or [self.b.address], now=self.clock.t,
                                  config_mtime=config_mtime)


def test_a_worker_is_drained_once_every_hsdir_has_descriptors_without_it(tmp_path):
    site = Site(tmp_path)
    site.publish_both()
    # Before the balancer is re-rendered it lists b, and b's intro points are out there.
    assert site.reason() == f"frontend news still lists {site.b.address}"
    mtime = site.rerender_without_b()
    status = site.bal.status()
    assert site.b.address not in {i["address"] for fe in status["frontends"] for i in fe["instances"]}
    # Reloaded and uploading, but no HSDir has confirmed the new descriptor yet.
    assert "not every HSDir has the new descriptor yet" in site.reason(config_mtime=mtime)
    site.settle()
    status = site.bal.status()
    assert {p["instance"] for fe in status["frontends"] for p in fe["published_intro_points"]} == {site.a.address}
    assert site.reason(config_mtime=mtime) is None
    # a is still published: not drained, whatever else holds.
    assert site.reason(site.a.address, config_mtime=mtime) == f"frontend news still lists {site.a.address}"


def test_one_hsdir_without_the_new_descriptor_is_enough_to_wait(tmp_path):
    """Every responsible HSDir but one confirms the re-rendered core's upload: clients asking
    that one still get b's introduction points, so the drain waits."""
    from onion.control import DescEvent

    site = Site(tmp_path)
    site.publish_both()
    mtime = site.rerender_without_b()
    slow = "H7"  # an HSDir of the next time period (FakeProtocol's ring)
    seen = 0
    for _ in range(6):
        site.clock.t += 1
        site.bal.tick()
        for _text, addr, hsdir in site.control.posts[seen:]:
            if hsdir != slow:
                site.bal.handle(DescEvent("UPLOADED", addr, hsdir))
        seen = len(site.control.posts)
    status = site.bal.status()
    pending = {u["hsdir"] for fe in status["frontends"] for d in fe["descriptors"] for u in d["hsdirs"]
               if u["state"] != "uploaded"}
    assert pending == {slow}
    assert "not every HSDir has the new descriptor yet (1 of" in site.reason(config_mtime=mtime)
    for _text, addr, hsdir in site.control.posts:
        if hsdir == slow:
            site.bal.handle(DescEvent("UPLOADED", addr, hsdir))
    assert site.reason(config_mtime=mtime) is None


def test_a_standby_balancer_is_drained_without_uploading(tmp_path):
    """blue/green: a standby builds descriptors but never uploads; its state 'standby'
    counts as done (nothing of b's will be uploaded by it)."""
    site = Site(tmp_path, publish=False)
    site.publish_both()
    mtime = site.rerender_without_b()
    site.settle()
    assert site.reason(config_mtime=mtime) is None


def test_old_or_stale_status_is_not_trusted(tmp_path):
    site = Site(tmp_path)
    site.publish_both()
    mtime = site.rerender_without_b()
    site.settle()
    status = site.bal.status()
    assert not_drained_reason(status, [site.b.address], now=site.clock.t, config_mtime=mtime) is None
    assert "predates the current config" in not_drained_reason(
        status, [site.b.address], now=site.clock.t, config_mtime=site.clock.t + 1)
    assert "stale" in not_drained_reason(status, [site.b.address], now=site.clock.t + 181)
    assert not_drained_reason({**status, "frontends": []}, [site.b.address], now=site.clock.t) == \
        "the status lists no frontends yet"


# ---------------------------------------------------------------- the command line
def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["drained", *argv])
    out = capsys.readouterr()
    return code, (out.out + out.err).strip()


def test_command_exit_codes_and_one_line_reasons(tmp_path, capsys):
    site = Site(tmp_path)
    site.publish_both()
    write_status(str(site.state), site.bal.status())
    b = f"{site.b.address}.onion"
    code, line = _cli(capsys, "--config", str(site.path), b)
    assert code == 3 and line == (f"the balancer config still lists {site.b.address}: nothing will drain it "
                                  "(whole-stack destroy?)")
    site.rerender_without_b()
    write_status(str(site.state), site.bal.status())
    os.utime(site.path, (time.time() - 10, time.time() - 10))
    code, line = _cli(capsys, "--config", str(site.path), b)
    assert code == 1 and "not every HSDir has the new descriptor yet" in line and "\n" not in line
    site.settle()
    write_status(str(site.state), site.bal.status())
    code, line = _cli(capsys, "--config", str(site.path), b)
    assert code == 0 and line == f"the balancer publishes without {site.b.address}"
    # --state-dir alone (no config: no mtime check, no listing check)
    assert _cli(capsys, "--state-dir", str(site.state), b)[0] == 0


@pytest.mark.parametrize("argv,message", [
    (["--state-dir", "/nonexistent", "a" * 56], "is not a valid v3 onion address"),
    (["--state-dir", "/nonexistent"], None),
])
def test_command_refuses_bad_input(tmp_path, capsys, argv, message):
    if message is None:
        with pytest.raises(SystemExit):
            main(["drained", *argv])
        return
    code, line = _cli(capsys, *argv)
    assert code == 2 and message in line


def test_command_without_a_status_file_says_so(tmp_path, capsys):
    address = IdentityKey.generate().address
    code, line = _cli(capsys, "--state-dir", str(tmp_path), address)
    assert code == 2 and "no status file" in line
