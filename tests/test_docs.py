"""The documentation's references hold: every relative link and every repository path that README.md,
docs/*.md and benchmarks/README.md name exists, the README shows the test command that CI runs verbatim, and
the pages cite no issue numbers.

Repository paths are found in the text (code spans, code blocks and prose alike) as anything that starts with
one of the repository's top-level folders, read from the repository root; `<placeholder>` and `*` parts match
like a glob (`benchmarks/bench_<op>.py` needs at least one bench_*.py). A bare source file name (`trainer.py`,
`gpu_check.sh`) must be the name of some file of the repository, so a page that lists modules notices when one
is renamed. Links are read relative to their page, and a `#fragment` must name a heading of the page it points
to.
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL_DIRS = ("benchmarks", "csrc", "dev", "docs", "python", "scripts", "tests", ".ci")

LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...
# not after a word character, '.', '/', '~' or '-': "/dev/null" and "../docs/x.md" are not repository-root paths
REPO_PATH = re.compile(r"(?<![\w./~-])((?:%s)/[\w.*<>/-]*)" % "|".join(re.escape(d) for d in TOP_LEVEL_DIRS))
PLACEHOLDER = re.compile(r"<[^<>/]*>")
SOURCE_NAME = re.compile(r"(?<![\w./~<>*-])([\w<>*-]+\.(?:py|sh|cu|cuh))\b")
SKIPPED_DIRS = {".git", "build", "dist", "__pycache__"}
ISSUE_NUMBER = re.compile(r"(?i)\bissues?\s+#?\d+|\bPR\s+#?\d+|(?<![\w&/#])#\d+\b")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _exists(path: str, base: Path) -> bool:
    path = PLACEHOLDER.sub("*", path).rstrip("/") or "."
    if "*" in path:
        return any(base.glob(path))
    return (base / path).exists()


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or whose #fragment's heading, does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if URL_SCHEME.match(target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


def _repo_file_names() -> list[str]:
    names = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not (d.startswith(".") and d != ".ci")]
        names += files
    return names


def missing_source_names(text: str, names: list[str]) -> list[str]:
    """The bare source file names in `text` (no folder in front) that no file of the repository has."""
    return [m.group(1) for m in SOURCE_NAME.finditer(text)
            if not fnmatch.filter(names, PLACEHOLDER.sub("*", m.group(1)))]


def missing_repo_paths(text: str) -> list[str]:
    """The repository paths named in `text` that do not exist under the repository root."""
    missing = []
    for match in REPO_PATH.finditer(text):
        path = match.group(1).rstrip(".-")
        if not _exists(path, ROOT):
            missing.append(path)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{_rel(page)} links to what is not in the repository: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_repository_paths_exist(page):
    missing = missing_repo_paths(page.read_text(encoding="utf-8"))
    assert not missing, f"{_rel(page)} names paths that are not in the repository: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_source_files_exist(page):
    missing = missing_source_names(page.read_text(encoding="utf-8"), _repo_file_names())
    assert not missing, f"{_rel(page)} names source files that the repository does not have: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_issue_numbers(page):
    found = [m.group(0) for m in ISSUE_NUMBER.finditer(page.read_text(encoding="utf-8"))]
    assert not found, f"{_rel(page)} cites issue or pull-request numbers {found}; say what the point is instead"


def test_readme_shows_the_test_command_that_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci) == 1, f".ci/run should run one test command line, found {ci}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert ci[0] in readme, f"README.md must show the test command of .ci/run on a line of its own: {ci[0]!r}"


def test_docs_folder_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [_rel(p) for p in sorted((ROOT / "docs").glob("*.md")) if f"]({_rel(p)})" not in readme]
    assert not unlinked, f"README.md does not link to {unlinked}"
