"""The repository explains itself: no tracked file points at documents a clone does not have.

The design and the benefit policy are described in ``docs/`` (architecture, protocol, policy,
design notes). A reference to a folder beside the checkout, or to a design or policy text by
a bare file name that is not in the repository, sends a newcomer to something they cannot
open; this test fails on every such line of every file ``git ls-files`` lists.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cardsvc.settlement import policydoc
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.policy import settle
from tests.unit.settlement import test_policy_examples as examples

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


# --- docs/policy.md against the policy file and the engine ----------------------------------

POLICY_DOC = ROOT / "docs" / "policy.md"
PARAMS = load_params(CURRENT_POLICY_VERSION)
# Numbers the hand-written text may hold: none is a figure of the policy file.
NOT_FIGURES = {
    PARAMS.version,
    *(row.insutype for row in PARAMS.allowed_med_types),  # scheme codes
    *(row.med_type for row in PARAMS.allowed_med_types),  # visit type codes
    *PARAMS.fund_pay_types.values(),  # fund codes
    "1",  # facility levels, and Step 1 to Step 3
    "2",
    "3",
    "100",  # fen in a yuan; pct's divisor
    "50",  # pct's half a fen, rounded up
    "2206",  # the national interfaces whose field names settlements use
    "2207",
    "403",  # HTTP statuses
    "422",
}


def test_policy_doc_blocks_are_what_the_policy_file_and_the_engine_give() -> None:
    """Fails on any figure of a generated block that differs from the policy file, on a worked
    example the engine does not reproduce, and after a change of the policy file until
    ``python -m cardsvc.settlement.policydoc`` is run again."""
    document = POLICY_DOC.read_text(encoding="utf-8")
    assert sorted(policydoc.blocks_in(document)) == sorted(policydoc.RENDERERS)
    fresh = policydoc.rewrite(document, PARAMS)
    assert fresh == document, (
        "docs/policy.md is not what the policy file gives: run "
        "`python -m cardsvc.settlement.policydoc`; differences:\n"
        + "\n".join(difflib.unified_diff(document.splitlines(), fresh.splitlines(), lineterm=""))
    )


def test_policy_doc_text_around_the_blocks_holds_no_policy_figure() -> None:
    text = policydoc.prose(POLICY_DOC.read_text(encoding="utf-8"))
    numbers = set(re.findall(r"\b\d+(?:[.,]\d+)*\b", text))
    assert numbers <= NOT_FIGURES, (
        f"figures written by hand in docs/policy.md: {sorted(numbers - NOT_FIGURES)}; "
        "put them in a generated block (cardsvc/settlement/policydoc.py)"
    )


def test_a_changed_figure_in_the_doc_or_the_policy_file_is_caught() -> None:
    document = POLICY_DOC.read_text(encoding="utf-8")
    assert "1,857,920" in document
    edited = document.replace("1,857,920", "1,857,921", 1)
    assert policydoc.rewrite(edited, PARAMS) != edited
    inpatient = msgspec.structs.replace(
        PARAMS.employee.inpatient,
        deductible={**PARAMS.employee.inpatient.deductible, "3": 70000},
    )
    moved = msgspec.structs.replace(
        PARAMS, employee=msgspec.structs.replace(PARAMS.employee, inpatient=inpatient)
    )
    assert policydoc.rewrite(document, moved) != document


def test_the_demo_stay_is_explained_to_the_fen() -> None:
    """The stay a demo terminal printed as ``funds ¥18,579.20 … cash ¥6,564.80``."""
    stay = policydoc.EXAMPLES[0]
    split = settle(PARAMS, *policydoc.example_inputs(stay))
    assert (split.medfee_sumamt, split.fund_pay_sumamt) == (3014400, 1857920)
    assert (split.acct_pay, split.psn_cash_pay, split.balc) == (500000, 656480, 0)
    document = POLICY_DOC.read_text(encoding="utf-8")
    assert "funds ¥18,579.20  account ¥5,000.00  cash ¥6,564.80" in document


def test_the_docs_worked_examples_are_the_policys_hand_computed_ones() -> None:
    """E1-E6 of docs/policy.md give, through the engine, the results computed by hand in
    tests/unit/settlement/test_policy_examples.py."""
    by_label: dict[str, dict[str, Any]] = {}
    for name, _, _, expected in examples.CASES:  # the first case of each label is the policy's
        by_label.setdefault(name.split()[0], expected)
    labelled = [ex for ex in policydoc.EXAMPLES if ex.label in by_label]
    assert [ex.label for ex in labelled] == ["E1", "E2", "E3", "E4", "E5", "E6"]
    for ex in labelled:
        split = settle(PARAMS, *policydoc.example_inputs(ex))
        expected = by_label[ex.label]
        for field in policydoc.RESULT_FIELDS:
            if field in expected:
                assert getattr(split, field) == expected[field], (ex.label, field)
        paid = {d.fund_pay_type: d.fund_payamt for d in split.setldetail}
        assert paid == expected.get("setldetail", paid), ex.label


def test_the_policydoc_check_command_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "policy.md"
    stale.write_text(POLICY_DOC.read_text(encoding="utf-8").replace("1,857,920", "1", 1))
    assert policydoc.main([str(stale), "--check"]) == 1
    assert policydoc.main([str(stale)]) == 0
    assert policydoc.main([str(stale), "--check"]) == 0
    assert stale.read_text(encoding="utf-8") == POLICY_DOC.read_text(encoding="utf-8")


def test_the_examples_catalog_is_the_one_the_demo_loads() -> None:
    """docs/policy.md says the demo loads the examples' items; the demo stay depends on it."""
    from cardsvc.devenv.demodata import CATALOG

    demo = {
        item["code"]: policydoc.CatalogItem(
            code=item["code"],
            chrgitm_lv=item["chrgitm_lv"],
            selfpay_prop=item.get("selfpay_prop"),
            max_price=item.get("max_price"),
            work_injury=item.get("work_injury", False),
        )
        for item in CATALOG
    }
    assert demo == dict(policydoc.EXAMPLE_CATALOG)
