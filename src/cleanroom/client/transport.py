"""The SDK's HTTP transport: signed requests, streamed files, errors mapped.

Every request but the service's identity is signed (RFC 9421,
:mod:`cleanroom.protocol.requests`). An answer is parsed strictly
(:func:`cleanroom.crypto.encoding.parse_json`): a body that is not JSON is a
:class:`DeserializationError`; an error status becomes the project's error
for it (:data:`ERRORS`), with the service's ``detail`` as its message.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from cleanroom.crypto.encoding import parse_json
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    GovernanceError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OperationalError,
    RateLimitedError,
)
from cleanroom.fs import atomic_path
from cleanroom.identities.keystore import Party
from cleanroom.progress import NoProgress, Progress
from cleanroom.protocol.requests import sign_request

ERRORS: dict[int, type[CleanroomError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: AuthorizationError,
    404: NotFoundError,
    409: GovernanceError,
    429: RateLimitedError,
    422: DeserializationError,
}

CHUNK = 1 << 20


class RequestSigner(httpx.Auth):
    requires_request_body = True

    def __init__(self, party: Party) -> None:
        self.party = party

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sign_request(request, request.content, self.party)
        yield request


class Transport:
    """One party's HTTP connection to one service."""

    def __init__(
        self,
        url: str,
        party: Party,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.party = party
        self.http = httpx.Client(base_url=url, timeout=timeout, transport=transport)
        self.auth = RequestSigner(party)

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        auth: bool = True,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The service's answer, parsed as JSON (None for an empty body)."""
        try:
            response = self.http.request(
                method, path, json=json_body, params=params, auth=self.auth if auth else None
            )
        except httpx.HTTPError as exc:
            raise OperationalError(f"cannot reach the service at {self.url}: {exc}") from exc
        return result(response, what=answer_name(method, path))

    def put_file(self, path: Path, route: str, progress: Progress | None = None) -> None:
        """Stream ``path`` to ``route`` (``{digest}`` is replaced by its SHA-256)."""
        # datasets.seal loads DuckDB: only code that uploads or downloads pays for it
        from cleanroom.datasets.seal import sha256_file  # noqa: PLC0415

        digest, size = sha256_file(path)
        progress = progress or NoProgress()
        progress.start(f"Uploading {path.name}", size, "bytes")
        target = route.replace("{digest}", digest)
        with path.open("rb") as fh:
            request = self.http.build_request(
                "PUT",
                target,
                content=_chunks(fh, progress),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            sign_request(request, None, self.party, body_sha256=digest)
            try:
                response = self.http.send(request)
            except httpx.HTTPError as exc:
                raise OperationalError(f"upload failed: {exc}") from exc
        result(response, what=answer_name("PUT", target))

    def download(
        self, route: str, digest: str, target: Path, progress: Progress | None = None
    ) -> None:
        """Stream ``route`` to ``target``; it appears only if its SHA-256 is ``digest``."""
        # datasets.seal loads DuckDB: only code that uploads or downloads pays for it
        from cleanroom.datasets.seal import sha256_file  # noqa: PLC0415

        progress = progress or NoProgress()
        request = self.http.build_request("GET", route)
        with atomic_path(Path(target)) as tmp:
            try:
                response = self.http.send(request, auth=self.auth, stream=True)
            except httpx.HTTPError as exc:
                raise OperationalError(f"download failed: {exc}") from exc
            try:
                if not response.is_success:
                    response.read()
                    result(response, what=answer_name("GET", route))
                size = _content_length(response)
                progress.start(f"Downloading {digest[:12]}", size, "bytes")
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes(CHUNK):
                        fh.write(chunk)
                        progress.advance(len(chunk))
            except httpx.HTTPError as exc:
                raise OperationalError(f"download failed: {exc}") from exc
            finally:
                response.close()
            if sha256_file(tmp)[0] != digest:
                raise IntegrityError("the downloaded ciphertext does not match its digest")


def answer_name(method: str, path: str) -> str:
    return f"the service's answer to {method} {path}"


def result(response: httpx.Response, *, what: str = "the service's answer") -> Any:
    """The JSON of a successful answer, or the project's error for its status."""
    if response.is_success:
        return parse_json(response.content, what=what) if response.content else None
    detail: object = None
    try:
        problem = parse_json(response.content, what=what)
    except DeserializationError:
        problem = None
    if isinstance(problem, dict):
        detail = problem.get("detail") or problem.get("title")
    if not detail:  # a validation error's detail is a list: shown as it came
        detail = response.reason_phrase
    error = ERRORS.get(response.status_code)
    if error is None:
        raise OperationalError(f"the service answered {response.status_code}: {detail}")
    raise error(str(detail))


def _content_length(response: httpx.Response) -> int | None:
    """The announced size, for progress only (a wrong one changes nothing)."""
    announced = response.headers.get("Content-Length", "")
    return (int(announced) or None) if announced.isascii() and announced.isdigit() else None


def _chunks(fh: IO[bytes], progress: Progress) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        progress.advance(len(chunk))
        yield chunk
