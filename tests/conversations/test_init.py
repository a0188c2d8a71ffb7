from __future__ import annotations

import sluiceway.conversations as conversations


def test_public_api_is_exactly_the_export_list() -> None:
    public = {name for name in vars(conversations) if not name.startswith("_")}
    modules = {"records", "schema", "sql", "store", "turns"}
    assert public - modules == set(conversations.__all__)
    assert all(hasattr(conversations, name) for name in conversations.__all__)
