from __future__ import annotations

import subprocess
import sys

import pytest

import sluiceway.conversations as conversations

MODULES = {"records", "schema", "sql", "store", "turns"}


def test_public_api_is_exactly_the_export_list() -> None:
    assert all(hasattr(conversations, name) for name in conversations.__all__)  # loads the lazy ones
    public = {name for name in vars(conversations) if not name.startswith("_")}
    assert public - MODULES == set(conversations.__all__)
    assert set(conversations.__all__) <= set(dir(conversations))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        conversations.nope  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_does_not_import_sqlalchemy() -> None:
    script = (
        "import sys, sluiceway.conversations as c\n"
        "assert 'sqlalchemy' not in sys.modules, 'imported at once'\n"
        "c.open_store\n"
        "assert 'sqlalchemy' in sys.modules, 'never imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
