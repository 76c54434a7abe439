"""``python -m cleanroom.broker`` (or ``cleanroom broker``): the attested key broker.

The service launches it like an enclave and talks to it over its standard
input and output, one JSON document per line:

- first, the service sends its public identity document; the broker answers
  ``{"identity": <its identity document>}`` (its key was just made, in memory);
- ``{"op": "offer", "nonce": N}`` -> ``{"offer": {identity, nonce, evidence}}``;
- ``{"op": "answer", "export": <ledger export>, "request": <key request>}``
  -> ``{"statement": <signed key.release or key.deny> | null}``.

A request that fails is answered ``{"error": <category>}``, one of a fixed
set; nothing else leaves the process (standard error is discarded).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from cleanroom.attestation import VirtualPlatform
from cleanroom.attestation.evidence import Attester
from cleanroom.attestation.tsm import TsmProvider
from cleanroom.broker.attested import AttestedBroker
from cleanroom.broker.memory import WithheldError
from cleanroom.errors import CleanroomError, DeserializationError, IntegrityError
from cleanroom.identities.identity import PublicIdentity


def handle(broker: AttestedBroker, line: str) -> dict[str, Any]:
    """One request line in, one answer out; never raises."""
    try:
        return _dispatch(broker, json.loads(line))
    except WithheldError:
        return {"error": "a release of this broker was withheld: the room is refused"}
    except IntegrityError:
        return {"error": "the ledger does not verify"}
    except (ValueError, CleanroomError):
        return {"error": "bad request"}
    except Exception:  # noqa: BLE001 - the broker outlives any one request
        return {"error": "broker failure"}


def _dispatch(broker: AttestedBroker, message: Any) -> dict[str, Any]:
    op = message.get("op") if isinstance(message, dict) else None
    if op == "offer":
        return {"offer": broker.offer(message.get("nonce"))}
    if op == "answer":
        export, request = message.get("export"), message.get("request")
        if not isinstance(export, dict) or not isinstance(request, dict):
            raise DeserializationError("an answer needs an export and a request")
        return {"statement": broker.answer(export, request)}
    raise DeserializationError("unknown operation")


def serve(broker: AttestedBroker, stdin: TextIO, stdout: TextIO) -> None:
    for line in stdin:
        if line.strip():
            stdout.write(json.dumps(handle(broker, line)) + "\n")
            stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanroom.broker", description=__doc__)
    parser.add_argument(
        "--platform",
        choices=["insecure-virtual", "configfs-tsm"],
        default="insecure-virtual",
        help="how to attest: the insecure virtual platform, or Linux configfs-tsm",
    )
    args = parser.parse_args(argv)
    try:
        service = PublicIdentity.from_document(json.loads(sys.stdin.readline()))
    except (ValueError, CleanroomError):
        sys.stderr.write("the first line must be the service's identity document\n")
        return 2
    attester: Attester = VirtualPlatform() if args.platform == "insecure-virtual" else TsmProvider()
    broker = AttestedBroker(attester, service)
    sys.stdout.write(json.dumps({"identity": broker.identity}) + "\n")
    sys.stdout.flush()
    serve(broker, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
