"""The repository explains itself: no tracked file points at documents a clone does not have.

The design and the benefit policy are described in ``docs/`` (architecture, protocol, policy,
design notes). A reference to a folder beside the checkout, or to a design or policy text by
a bare file name that is not in the repository, sends a newcomer to something they cannot
open; this test fails on every such line of every file ``git ls-files`` lists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Outside documents: a sibling folder of the checkout, and design/policy texts named by a
# bare upper-case file name (the repository's own documents are lower-case, under docs/).
OUTSIDE = re.compile(
    r"\.\./shared\b"
    r"|\bshare[d]/(?:DESIGN|POLICY|NATIONAL|PERFORMANCE|STYLE)\b"
    r"|/wor[k]/"
    r"|\b(?:DESIGN|POLICY|NATIONAL|PERFORMANCE|STYLE)\.md\b"
)


def tracked_files() -> list[Path]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    out = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def outside_references(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{name}:{line_no}: {line.strip()}")
    return found


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    found = outside_references(tracked_files())
    assert not found, "references to documents a clone does not have:\n" + "\n".join(found)


# Assembled from parts (the patterns above bracket a letter) so this file names nothing it
# forbids.
_MD, _UP, _WORK, _SHARED = ".md", "..", "work", "shared"


@pytest.mark.parametrize(
    "line",
    [
        f"exactly as `{_UP}/{_SHARED}/POLICY{_MD}` says",
        f"see /{_WORK}/{_SHARED}/DESIGN",
        f"the crypto profile of DESIGN{_MD}",
        f"POLICY{_MD}'s worked examples",
        f"the national NATIONAL{_MD} table",
        f"{_UP}/{_SHARED}/hooks",
    ],
)
def test_the_scan_catches_each_kind_of_outside_reference(tmp_path: Path, line: str) -> None:
    path = tmp_path / "x.md"
    path.write_text(f"ok line\n{line}\n")
    assert outside_references([path]) != []


@pytest.mark.parametrize(
    "line", ["docs/policy.md", "[policy.md](policy.md)", "docs/design-notes.md", "shared state"]
)
def test_the_repositorys_own_documents_are_not_flagged(tmp_path: Path, line: str) -> None:
    path = tmp_path / "x.md"
    path.write_text(line + "\n")
    assert outside_references([path]) == []
