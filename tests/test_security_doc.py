"""docs/security.md names the tests that show each defence: every one of them must exist, and
every threat must name at least one, so the page cannot drift from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DOC = PROJECT / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/.-]+\.py)(?:::([\w:]+))?`")


def references(text: str) -> list[tuple[str, str | None]]:
    """Each ``tests/...py`` or ``tests/...py::name`` the text names, in order."""
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(text)]


def defined(path: Path) -> set[str]:
    """The node ids a test file defines: functions and classes, and Class::method."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{item.name}" for item in node.body
                      if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
    return names


def missing(text: str, root: Path = PROJECT) -> list[str]:
    """The references in *text* that name no file, or no test in their file."""
    absent = []
    for file, name in references(text):
        path = root / file
        if not path.is_file():
            absent.append(file)
        elif name is not None and name not in defined(path):
            absent.append(f"{file}::{name}")
    return absent


def sections(text: str) -> dict[str, str]:
    """The body of each ``## `` section, by heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_test_the_security_model_names_exists() -> None:
    text = DOC.read_text()
    assert len(references(text)) >= 50
    assert missing(text) == []


def test_every_threat_names_a_test_of_its_defence() -> None:
    threats = sections(DOC.read_text())
    assert len(threats) >= 10
    untested = [title for title, body in threats.items()
                if not any(name for _, name in references(body))]
    assert untested == []


def test_a_renamed_test_or_a_moved_file_is_caught() -> None:
    text = ("`tests/test_security_doc.py::test_a_renamed_test_or_a_moved_file_is_caught` "
            "`tests/test_security_doc.py::test_that_does_not_exist` "
            "`tests/nowhere/test_gone.py::test_x` `tests/test_acl.py`")
    assert missing(text) == ["tests/test_security_doc.py::test_that_does_not_exist",
                             "tests/nowhere/test_gone.py"]
