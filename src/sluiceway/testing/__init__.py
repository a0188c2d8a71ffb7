"""Test doubles for sluiceway's seams: wire-exact local upstreams for the SDK-backed providers.

Shipped in the package (not under ``tests/``) so the benchmarks can use the same upstreams.
"""

from sluiceway.testing.upstreams import (
    AnthropicUpstream,
    Disconnect,
    OpenAIUpstream,
    ReceivedRequest,
    Script,
    Upstream,
    UpstreamLog,
    run_upstream,
)

__all__ = [
    "AnthropicUpstream",
    "Disconnect",
    "OpenAIUpstream",
    "ReceivedRequest",
    "Script",
    "Upstream",
    "UpstreamLog",
    "run_upstream",
]
