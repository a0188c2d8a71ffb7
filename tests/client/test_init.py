"""The curated public API of ``sluiceway.client``."""

from __future__ import annotations

import sluiceway.client as client


def test_the_export_list() -> None:
    assert set(client.__all__) == {
        "DEFAULT_URL",
        "AsyncChatStream",
        "AsyncClient",
        "ChatResult",
        "ChatStream",
        "Client",
        "ConnectionFailedError",
        "ErrorEvent",
        "Event",
        "Finish",
        "Messages",
        "SluicewayError",
        "StreamProtocolError",
        "TextDelta",
        "Usage",
    }
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_private_modules_stay_private() -> None:
    public = {name for name in vars(client) if not name.startswith("_")}
    assert public - set(client.__all__) <= {"annotations"}
