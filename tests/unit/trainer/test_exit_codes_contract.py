"""The exit-code table exists three times: docs/contract.md, the trainer's `Reason` (what it
exits with) and the operator's `EXIT_REASONS` (how it reads a pod's exit). All three must agree."""

from __future__ import annotations

import re
from pathlib import Path

from accordion_operator.trainingrun.observe import EXIT_REASONS
from accordion_trainer.errors import Reason

CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "contract.md"
#: Success has no reason; the table writes an em dash in its reason column.
NO_REASON = "—"


def contract_exit_codes() -> dict[int, str]:
    """The rows of the contract's "Exit codes" table: code -> reason (`—` for none)."""
    text = CONTRACT.read_text()
    section = re.search(r"^## Exit codes.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None, "docs/contract.md has no '## Exit codes' section"
    rows = re.findall(r"^\| (\d+) \| `?([^`|]+?)`? \|", section.group(1), re.M)
    table = {int(code): reason.strip() for code, reason in rows}
    assert len(table) == len(rows), "an exit code is listed twice"
    return table


def contract_failures() -> dict[int, str]:
    return {code: reason for code, reason in contract_exit_codes().items() if code != 0}


def test_the_contract_table_is_parsed() -> None:
    table = contract_exit_codes()
    assert table[0] == NO_REASON
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", reason) for reason in contract_failures().values())


def test_trainer_exit_codes_match_the_contract() -> None:
    # Every member, aliases included: two reasons sharing a code would be one enum member.
    members = sorted((reason.value, name) for name, reason in Reason.__members__.items())
    assert members == sorted(contract_failures().items())


def test_operator_exit_reasons_match_the_contract() -> None:
    assert contract_failures() == EXIT_REASONS
