"""Fuzz every HTTP route from the server's own OpenAPI document: no 5xx, no undocumented answer.

Schemathesis takes the server's OpenAPI document, generates valid and invalid requests for each
operation (the compatible APIs included) and sends them to a real server, with and without an API
key. Each response is checked: not a server error, a documented status, content type, body and
headers, and every request that breaks the schema refused with a 4xx. Examples are bounded (and
deterministic) so the file runs in well under two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sluiceway.server.app import create_app
from tests.live import LiveServer, live_server, make_settings

pytestmark = pytest.mark.e2e

KEY = "sk-fuzz-" + "k" * 24
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    response_headers_conformance,
]
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


SETTINGS = make_settings(api_keys=[KEY], max_body_bytes=64 * 1024)

# The schema is built from the app at import time (schemathesis parametrizes at collection);
# test_served_schema_is_the_one_fuzzed checks that the running server serves the same document.
OPENAPI = create_app(SETTINGS).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.generation.update(
    modes=list(schemathesis.GenerationMode), max_examples=50, database="none", deterministic=True
)


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[LiveServer]:
    with live_server(SETTINGS) as live:
        yield live


def test_served_schema_is_the_one_fuzzed(fuzzed_server: LiveServer) -> None:
    assert httpx.get(f"{fuzzed_server.url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@FUZZ
def test_every_route_answers_as_documented(case: schemathesis.Case, fuzzed_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    case.call_and_validate(base_url=fuzzed_server.url, headers=headers, checks=CHECKS, timeout=30)


@schema.parametrize()
@settings(FUZZ, max_examples=5)
def test_every_route_without_a_key_answers_as_documented(
    case: schemathesis.Case, fuzzed_server: LiveServer
) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=30)
