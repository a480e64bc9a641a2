"""The user docs (README.md and docs/) only name what exists.

Every relative link resolves to a file of the repository (and its #anchor to a heading or
an explicit anchor of that file); every repository path they name (`tests/...`,
`nodes/templates/...`, `docs/x.md`, a bare `x.md`) exists, and a `tests/f.py::test_name`
names a test that exists; every `python -m MODULE` they show imports, every `bash
scripts/X` and `python path/x.py` is a file; the `onion` and `python -m lab` commands name
subcommands and options their argparse has (also `python -m infra.restore`'s options).
And they speak to users: no words from the project's own history ("issue 5", "session 3",
"the seed runbook"), neither in the docs nor in any `--help`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def user_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


DOCS = user_docs()
DOC_IDS = [rel(p) for p in DOCS]


# ---------------------------------------------------------------- markdown reading
FENCE_RE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Line:
    number: int
    text: str
    code: bool  # inside a fenced code block


def lines_of(path: Path) -> list[Line]:
    out, code = [], False
    for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE_RE.match(text):
            code = not code
            out.append(Line(i, text, True))
            continue
        out.append(Line(i, text, code))
    return out


INLINE_CODE_RE = re.compile(r"`([^`]+)`")
LINK_RE = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE_RE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR_RE = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose(line: Line) -> str:
    """The line without its inline code spans (links inside code are not links)."""
    return INLINE_CODE_RE.sub("", line.text)


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for line in lines_of(path):
        if line.code:
            continue
        text = prose(line)
        found += [(line.number, m.group(1)) for m in LINK_RE.finditer(text)]
        found += [(line.number, m.group(1)) for m in IMAGE_RE.finditer(text)]
        m = REF_DEF_RE.match(text)
        if m:
            found.append((line.number, m.group(1)))
    return found


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text, lower case, punctuation other than '-'
    and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in lines_of(path):
        if line.code:
            continue
        out.update(HTML_ANCHOR_RE.findall(line.text))
        m = HEADING_RE.match(line.text)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


# ---------------------------------------------------------------- links and anchors
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_relative_link_and_anchor_exists(doc):
    problems = []
    for number, target in links(doc):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        where = f"{rel(doc)}:{number}: link {target!r}"
        if not dest.exists():
            problems.append(f"{where}: {path_part} does not exist")
            continue
        if not dest.resolve().is_relative_to(REPO):
            problems.append(f"{where}: points outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading or anchor #{anchor} in {rel(dest)}")
    assert problems == []


# ---------------------------------------------------------------- repository paths named
TOP_DIRS = ("docs", "tests", "infra", "nodes", "onion", "lab", "bench", "scripts", "policy", "ci",
            "monitoring", "notes", "stack", ".github", ".ci")
REPO_PATH_RE = re.compile(r"(?<![\w./~$-])((?:" + "|".join(re.escape(d) for d in TOP_DIRS)
                          + r")/[\w./*@-]*[\w*](?:::[\w\[\]-]+)?)")
BARE_MD_RE = re.compile(r"(?<![\w./-])([\w.-]+\.md)\b")


def named_paths(doc: Path) -> list[tuple[int, str]]:
    found = []
    for line in lines_of(doc):
        if FENCE_RE.match(line.text):
            continue
        text = re.sub(r"\]\([^)]*\)", "]", line.text)  # link targets are checked above
        text = re.sub(r"https?://\S+", "", text)
        found += [(line.number, m.group(1)) for m in REPO_PATH_RE.finditer(text)]
    return found


def _test_exists(file: Path, name: str) -> bool:
    name = name.split("[", 1)[0]
    return re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", file.read_text(), re.M) is not None


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_repository_path_named_exists(doc):
    problems = []
    for number, token in named_paths(doc):
        path, _, test = token.partition("::")
        path = path.rstrip(".")
        matches = sorted(REPO.glob(path)) if "*" in path else [REPO / path] if (REPO / path).exists() else []
        if not matches:
            problems.append(f"{rel(doc)}:{number}: {path} is not in the repository")
        elif test and not _test_exists(matches[0], test):
            problems.append(f"{rel(doc)}:{number}: {path} has no test {test}")
    for line in lines_of(doc):
        text = re.sub(r"https?://\S+", "", line.text)
        for m in BARE_MD_RE.finditer(text):
            name = m.group(1)
            if not any((base / name).exists() for base in (doc.parent, REPO, REPO / "docs")):
                problems.append(f"{rel(doc)}:{line.number}: {name} is not in the repository")
    assert problems == []


# ---------------------------------------------------------------- commands shown
PY_M_RE = re.compile(r"(?:^|[\s`'\"(|;&$])(?:[\w./~-]*/)?python3?\s+-m\s+([A-Za-z_][\w.]*)([^`|;&#\n]*)")
PY_FILE_RE = re.compile(r"(?:^|[\s`'\"(|;&$])(?:[\w./~-]*/)?python3?\s+((?:[\w.-]+/)+[\w.-]+\.py)\b")
BASH_RE = re.compile(r"(?:^|[\s`'\"(|;&$])(?:sudo\s+)?(?:bash|sh)\s+(scripts/[\w.-]+)")
ONION_IN_CODE_RE = re.compile(r"^\s*(?:\$\s+)?(?:sudo\s+)?onion\s+([^|;&#\n]*)")
ONION_INLINE_RE = re.compile(r"^(?:sudo\s+)?onion\s+([^|;&#]*)")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    module: str  # "onion" for the console script
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.module} {' '.join(self.args)}".rstrip()


def commands(doc: Path) -> tuple[list[Command], list[tuple[int, str]]]:
    """(`python -m` and `onion` commands, files run with bash/python) named in `doc`."""
    cmds, files = [], []
    for line in lines_of(doc):
        if FENCE_RE.match(line.text):
            continue
        text = line.text
        for m in PY_M_RE.finditer(text):
            cmds.append(Command(rel(doc), line.number, m.group(1), tuple(m.group(2).split())))
        files += [(line.number, m.group(1)) for m in PY_FILE_RE.finditer(text)]
        files += [(line.number, m.group(1)) for m in BASH_RE.finditer(text)]
        if line.code:
            m = ONION_IN_CODE_RE.match(text)
            if m:
                cmds.append(Command(rel(doc), line.number, "onion", tuple(m.group(1).split())))
        else:
            for span in INLINE_CODE_RE.findall(text):
                m = ONION_INLINE_RE.match(span)
                if m:
                    cmds.append(Command(rel(doc), line.number, "onion", tuple(m.group(1).split())))
    return cmds, files


@lru_cache(maxsize=None)
def parser_of(module: str) -> argparse.ArgumentParser | None:
    """The argparse parser of a module of ours that exposes `build_parser()`."""
    if module == "onion":
        module = "onion.__main__"
    elif module == "lab":
        module = "lab.__main__"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    build = getattr(mod, "build_parser", None)
    return build() if callable(build) else None


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


WORD_RE = re.compile(r"^[a-z][a-z0-9-]*$")
OPTION_RE = re.compile(r"^--?[A-Za-z][\w-]*")


def check_command(cmd: Command) -> list[str]:
    module = "onion" if cmd.module in ("onion", "onion.__main__") else cmd.module
    if module != "onion" and importlib.util.find_spec(module.split(".")[0]) is None:
        return [f"{cmd}: no module {module}"]
    if module != "onion":
        try:
            if importlib.util.find_spec(module) is None:
                return [f"{cmd}: no module {module}"]
        except ModuleNotFoundError:
            return [f"{cmd}: no module {module}"]
    parser = parser_of(module)
    if parser is None:
        return []
    options = option_strings(parser)
    subs = subparsers(parser)
    words = [a for a in cmd.args if WORD_RE.match(a)]
    if subs and cmd.args and WORD_RE.match(cmd.args[0]) and cmd.args[0] not in subs:
        return [f"{cmd}: {module} has no subcommand {cmd.args[0]!r} (it has {', '.join(sorted(subs))})"]
    chosen = next((w for w in words if w in subs), None)
    if chosen is not None:
        options |= option_strings(subs[chosen])
    problems = []
    for arg in cmd.args:
        m = OPTION_RE.match(arg)
        if m and m.group(0) not in options:
            problems.append(f"{cmd}: {module}{' ' + chosen if chosen else ''} has no option {m.group(0)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_command_shown_exists(doc):
    cmds, files = commands(doc)
    problems = [p for c in cmds for p in check_command(c)]
    problems += [f"{rel(doc)}:{n}: {f} is not in the repository" for n, f in files if not (REPO / f).is_file()]
    assert problems == []


# ---------------------------------------------------------------- the project's history stays out
HISTORY_RE = re.compile(
    r"\b(?:issues?|sessions?)\s+#?\d+|\bphase\s+\d+\b|\bseed runbook\b|\bthe issue's\b|\bhelper [A-Z]\b"
    r"|\brunbook of the backup seed\b",
    re.I)


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_docs_speak_to_users_not_of_the_projects_history(doc):
    problems = []
    for line in lines_of(doc):
        text = re.sub(r"https?://\S+", "", line.text)
        problems += [f"{rel(doc)}:{line.number}: {m.group(0)!r}" for m in HISTORY_RE.finditer(text)]
    assert problems == []


def all_help_texts() -> list[tuple[str, str]]:
    out = []
    for module in ("onion", "lab", "infra.restore"):
        parser = parser_of(module)
        out.append((module, parser.format_help()))
        out += [(f"{module} {name}", sub.format_help()) for name, sub in subparsers(parser).items()]
    return out


def test_no_help_text_speaks_of_the_projects_history():
    texts = all_help_texts()
    assert {"onion run", "onion import-tconf", "lab up"} <= {name for name, _ in texts}
    assert [(name, m.group(0)) for name, text in texts for m in HISTORY_RE.finditer(text)] == []


# ---------------------------------------------------------------- the checks themselves
def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """Each check on a small document with one defect of each kind."""
    doc = tmp_path / "doc.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## The `onionstack:` keys (config)\n")
    doc.write_text("\n".join([
        "# Title",
        "[ok](other.md#the-onionstack-keys-config) [gone](missing.md) [bad anchor](other.md#nope)",
        "[self](#title) [self bad](#nothing) [web](https://example.org/x.md)",
        "```sh",
        "python -m onion keygen --out keys/news   # fine",
        "python -m onion frobnicate",
        "onion run --no-such-flag -c x.yaml",
        "python -m no_such_module_here",
        "bash scripts/no-such-script",
        "```",
        "See `notes/private-tor-network.md`, DESIGN.md and tests/test_docs.py::test_no_such_test.",
        "As in session 3 (issue 18), following the seed runbook.",
    ]) + "\n")
    link_problems = []
    for number, target in links(doc):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part) if path_part else doc
        if not dest.exists():
            link_problems.append(target)
        elif anchor and anchor not in anchors(dest):
            link_problems.append(target)
    assert link_problems == ["missing.md", "other.md#nope", "#nothing"]

    cmds, files = commands(doc)
    problems = [p for c in cmds for p in check_command(c)]
    assert len(problems) == 3, problems
    assert "no subcommand 'frobnicate'" in problems[0]
    assert "has no option --no-such-flag" in problems[1]
    assert "no module no_such_module_here" in problems[2]
    assert files == [(9, "scripts/no-such-script")] and not (REPO / files[0][1]).exists()

    paths = [p for _, p in named_paths(doc)]
    assert paths == ["scripts/no-such-script", "notes/private-tor-network.md",
                     "tests/test_docs.py::test_no_such_test"]
    assert not (REPO / "notes").exists()
    assert not _test_exists(REPO / "tests/test_docs.py", "test_no_such_test")
    assert _test_exists(REPO / "tests/test_docs.py", "test_the_checks_catch_what_they_are_for")
    bare = [m.group(1) for line in lines_of(doc) for m in BARE_MD_RE.finditer(line.text)]
    assert "DESIGN.md" in bare and not (REPO / "DESIGN.md").exists()

    history = [m.group(0) for line in lines_of(doc) for m in HISTORY_RE.finditer(line.text)]
    assert history == ["session 3", "issue 18", "seed runbook"]
