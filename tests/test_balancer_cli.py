"""`python -m onion run | status | maps`: arguments, exit codes, output."""
from __future__ import annotations

import json
import os

from onion.__main__ import main
from onion.keys import IdentityKey
from onion.status import write_status


def _config(tmp_path, mode=0o600):
    front, a, b = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
    key = tmp_path / "news.key"
    key.write_bytes(front.to_tor_secret_key())
    os.chmod(key, mode)
    path = tmp_path / "balancer.yaml"
    path.write_text(f"state_dir: state\nfrontends:\n  - name: news\n    key_file: news.key\n"
                    f"    instances: [{a.hostname}, {b.address}]\n")
    return str(path), front, a, b


def test_maps_prints_frontend_to_instances(tmp_path, capsys):
    path, front, a, b = _config(tmp_path)
    assert main(["maps", "--config", path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"news {front.hostname} {a.hostname}", f"news {front.hostname} {b.hostname}"]


def test_run_refuses_a_group_readable_key_with_one_line(tmp_path, capsys):
    path, *_ = _config(tmp_path, mode=0o640)
    assert main(["run", "--config", path, "--control-port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chmod 600" in err[0] and err[0].startswith("onion run: frontend 'news'")


def test_run_rejects_both_control_options(tmp_path, capsys):
    path, *_ = _config(tmp_path)
    try:
        main(["run", "--config", path, "--control-port", "1", "--control-socket", "/x"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_status_reads_state_dir_from_config_and_prints_text_or_json(tmp_path, capsys):
    path, front, a, b = _config(tmp_path)
    data = {"version": 1, "pid": 1, "written_at": 1e9, "publish": True,
            "tor": {"connected": True, "control": "127.0.0.1:9051", "time_period": 5},
            "frontends": [{"name": "news", "address": front.address, "instances": [
                {"address": a.address, "healthy": False, "in_use": False, "descriptor": None,
                 "last_error": "DescriptorSignatureError: bad", "probe": {"last_result": "host unreachable",
                                                                          "consecutive_failures": 3, "last_at": 1e9}}],
                "published_intro_points": [], "descriptors": [{"time_period": 5, "role": "current", "hsdirs": [
                    {"hsdir": "AB" * 20, "state": "failed", "result": "FAILED UPLOAD_REJECTED", "attempted_at": 1e9,
                     "intro_points": 3}]}], "next_publish_at": 1e9 + 10}]}
    write_status(str(tmp_path / "state"), data)
    assert main(["status", "--config", path]) == 0
    out = capsys.readouterr().out
    assert f"frontend news  {front.hostname}" in out
    assert "DOWN" in out and "last error: DescriptorSignatureError: bad" in out
    assert "FAILED UPLOAD_REJECTED" in out and "next planned publish: 2001-09-09T01:46:50Z" in out
    assert main(["status", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    assert json.loads(capsys.readouterr().out) == data
