"""The service's side of the attested key broker: a child process it talks to
over pipes (see :mod:`cleanroom.broker.__main__`). The service holds nothing
that opens a deposit; it passes ledger exports and key requests in and signed
statements out.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import threading
from typing import Any, Protocol

from cleanroom.children import child_environment
from cleanroom.errors import OperationalError
from cleanroom.identities.identity import PublicIdentity

log = logging.getLogger("cleanroom.broker")
ANSWER_TIMEOUT_S = 120.0  # a whole room's ledger verified, with room to spare


class Broker(Protocol):
    """What the service asks of a key broker (in its own process, or in this one
    for tests: :class:`cleanroom.broker.attested.AttestedBroker`)."""

    @property
    def fingerprint(self) -> str: ...

    def offer(self, nonce: str) -> dict[str, Any]: ...

    def answer(self, export: dict[str, Any], request: dict[str, Any]) -> str | None: ...


class BrokerUnavailableError(OperationalError):
    """The key broker process is not running or did not answer."""


class BrokerLink:
    """A running ``python -m cleanroom.broker``: one request at a time. If the
    process dies it is started again, with a new key (deposits sealed to the
    old one are then stale until their owners re-deposit)."""

    def __init__(self, service_document: dict[str, Any], platform: str) -> None:
        self._document = service_document
        self.platform = platform
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._fingerprint = ""
        with self._lock:
            self._start()

    def _start(self) -> None:
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "cleanroom.broker", "--platform", self.platform],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=child_environment(),
            )
        except OSError as exc:
            raise BrokerUnavailableError("the key broker could not be started") from exc
        hello = self._exchange(self._document)
        identity = PublicIdentity.from_document(hello.get("identity"))
        self._fingerprint = identity.fingerprint
        log.info("key broker started with key %s", identity.fingerprint[:12])

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise BrokerUnavailableError("the key broker is not running")
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            # one line answers each request, so nothing waits in the pipe's buffer
            if not select.select([process.stdout], [], [], ANSWER_TIMEOUT_S)[0]:
                process.kill()  # started again, with a new key, at the next request
                raise BrokerUnavailableError("the key broker did not answer in time")
            line = process.stdout.readline()
            answer = json.loads(line)
        except (OSError, ValueError) as exc:
            raise BrokerUnavailableError("the key broker did not answer") from exc
        if not isinstance(answer, dict):
            raise BrokerUnavailableError("the key broker did not answer")
        return answer

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                log.warning("the key broker stopped; starting a new one (a new key)")
                self._stop()
                self._start()
            answer = self._exchange(message)
        if "error" in answer:
            raise BrokerUnavailableError(f"the key broker refused: {answer['error']}")
        return answer

    @property
    def fingerprint(self) -> str:
        with self._lock:
            return self._fingerprint

    def offer(self, nonce: str) -> dict[str, Any]:
        offer = self._call({"op": "offer", "nonce": nonce}).get("offer")
        if not isinstance(offer, dict):
            raise BrokerUnavailableError("the key broker gave no offer")
        return offer

    def answer(self, export: dict[str, Any], request: dict[str, Any]) -> str | None:
        statement = self._call({"op": "answer", "export": export, "request": request})
        found = statement.get("statement")
        return found if isinstance(found, str) else None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
