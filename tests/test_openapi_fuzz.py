"""Schemathesis against the live service's OpenAPI: every operation, with
generated (valid and invalid) input, signed by a real member. No 5xx, and no
response that breaks the published schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cleanroom import Party
from cleanroom.client import Client
from cleanroom.protocol.requests import sign_request
from cleanroom.service.local import local_service


class Signed(requests.auth.AuthBase):
    """Signs every generated request as a member (RFC 9421)."""

    def __init__(self, party: Party) -> None:
        self.party = party

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        sign_request(request, body.encode() if isinstance(body, str) else body, self.party)
        return request


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Party, str]]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with local_service(data) as url:
        member = Party.create("fuzzer")
        with Client(url, member) as client:
            room = client.create_room("fuzzed", [(member.identity_document(), ["analyst"])])
        yield url, member, room.id


def _operations() -> list[Any]:
    """Every operation of the service's published OpenAPI document."""
    import tempfile  # noqa: PLC0415

    from cleanroom.service.server import Settings, build_app  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        spec = build_app(Settings(data_dir=Path(tmp))).openapi()
    loaded = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in loaded.get_all_operations()]


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_no_5xx_and_schema_conformance(operation: Any, live: tuple[str, Party, str]) -> None:
    url, member, room = live

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(case: Any) -> None:
        if case.path_parameters and "room" in case.path_parameters:
            case.path_parameters["room"] = room  # reach the handlers, not just the membership check
        case.call_and_validate(
            base_url=url,
            auth=Signed(member),
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    run()
