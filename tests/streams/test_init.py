from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import sluiceway.streams as streams


def test_the_public_api_is_exactly_the_export_list() -> None:
    public = {n for n, v in vars(streams).items() if not n.startswith("_") and not isinstance(v, ModuleType)}
    assert public == set(streams.__all__)
    assert all(getattr(streams, name) is not None for name in streams.__all__)


def test_redis_is_imported_only_when_its_backend_is_used() -> None:
    code = "import sys, sluiceway.streams, sluiceway.server.app; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
