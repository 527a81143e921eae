"""The docs' promises name tests that exist: every test that docs/SEMANTICS.md and
docs/SECURITY.md name (a backquoted snake_case name of five words or more) is a Rust `fn` or a
Python `def` somewhere in the repository, so a renamed or removed test cannot leave a promise
that nothing checks."""

import re
import subprocess

import pytest

from conftest import ROOT

DOCS = ["docs/SEMANTICS.md", "docs/SECURITY.md"]


def named_tests(doc: str) -> set[str]:
    text = (ROOT / doc).read_text()
    return {n for n in re.findall(r"`([a-z][a-z0-9_]+)`", text) if n.count("_") >= 4}


def sources() -> str:
    files = subprocess.run(["git", "ls-files", "*.rs", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return "\n".join((ROOT / f).read_text(errors="replace") for f in files)


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_promise_names_exists(doc):
    names = named_tests(doc)
    assert len(names) > 20, f"{doc}: {len(names)} test names found; has the form changed?"
    src = sources()
    missing = sorted(n for n in names if not re.search(rf"\b(fn|def)\s+{n}\b", src))
    assert not missing, f"{doc} names tests that do not exist: {missing}"
