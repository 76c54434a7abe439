"""Which ledger service key a member trusts: pins and rotations (pure rules, no I/O).

A member learns the service's identity once per service URL: on first use
(trust on first use) or out of band (``service_key=``, ``--service-key
service.identity.json``), and pins it. Afterwards every key the service
presents must be the pinned one, or be reached from it by a chain of
**rotation statements**, each signed by the key it replaces::

    {"payload": {"type": "service.rotate", "from": "<old fingerprint>",
                 "to": <the new key's self-signed identity document>,
                 "created_at": <ms>},
     "signature": "<detached JWS by the old key, typ cleanroom-service-rotation+jws>"}

Anything else is a possible fork (an operator restarting the service with a
fresh key and a rewritten history) and raises :class:`ServiceIdentityError`,
naming the pinned and presented keys and where the pin is kept.

Invariants: a pin changes only through a verified rotation chain; a key the
member gave out of band never overrides a different pin; the keys a pin
replaced are remembered, so tree heads a room showed under an older key still
count (tree heads are kept per room, not per key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cleanroom.errors import DeserializationError, ForkError, IntegrityError
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party

ROTATION_TYP = "cleanroom-service-rotation+jws"
ROTATION_TYPE = "service.rotate"
SERVICE_IDENTITY_FILE = "service.identity.json"  # what a member is given out of band


class ServiceIdentityError(ForkError):
    """The service presents a key other than the pinned one, without a rotation
    statement signed by the pinned key (or the rotation offered is not valid)."""


@dataclass(frozen=True)
class ServiceRotation:
    """A verified-shape rotation statement; :meth:`verify` checks its signature."""

    old: str
    new: PublicIdentity
    created_at: int
    document: dict[str, Any]

    @classmethod
    def parse(cls, document: Any) -> ServiceRotation:
        payload = document.get("payload") if isinstance(document, dict) else None
        if (
            not isinstance(payload, dict)
            or payload.get("type") != ROTATION_TYPE
            or set(payload) != {"type", "from", "to", "created_at"}
            or not isinstance(payload["from"], str)
            or not isinstance(payload["created_at"], int)
        ):
            raise DeserializationError("not a service.rotate statement")
        new = PublicIdentity.from_document(payload["to"])
        return cls(payload["from"], new, payload["created_at"], document)

    def verify(self, old: PublicIdentity) -> PublicIdentity:
        """The new key, if ``old`` signed this rotation away from itself."""
        if self.old != old.fingerprint:
            raise ServiceIdentityError(
                f"the rotation to {self.new.fingerprint} is from {self.old}, "
                f"not from the pinned key {old.fingerprint}"
            )
        try:
            old.verify(self.document, typ=ROTATION_TYP)
        except IntegrityError as exc:
            raise ServiceIdentityError(
                f"the rotation to {self.new.fingerprint} is not signed by the pinned key "
                f"{old.fingerprint}: refused"
            ) from exc
        return self.new


def sign_service_rotation(old: Party, new: Mapping[str, Any], *, now: int) -> dict[str, Any]:
    """The old service key's statement that ``new`` (an identity document) replaces it."""
    PublicIdentity.from_document(new)
    payload = {"type": ROTATION_TYPE, "from": old.fingerprint, "to": dict(new), "created_at": now}
    return old.sign_document(payload, typ=ROTATION_TYP)


def parse_service_key(document: Any) -> PublicIdentity | ServiceRotation:
    """A ``--service-key`` file: an identity document, or a rotation statement."""
    payload = document.get("payload") if isinstance(document, dict) else None
    if isinstance(payload, dict) and payload.get("type") == ROTATION_TYPE:
        return ServiceRotation.parse(document)
    return PublicIdentity.from_document(document)


@dataclass(frozen=True)
class Pin:
    """The service key trusted for one URL, and the keys it replaced (oldest first)."""

    identity: PublicIdentity
    document: dict[str, Any]
    pinned_at: int
    how: str  # "first use", "given" or "rotation"
    previous: tuple[dict[str, Any], ...] = ()  # identity documents of the keys replaced
    rotations: tuple[dict[str, Any], ...] = field(default=())  # previous[i] -> next key

    @cached_property
    def fingerprints(self) -> frozenset[str]:
        """Every key whose tree heads still count for this service."""
        replaced = (PublicIdentity.from_document(d).fingerprint for d in self.previous)
        return frozenset((*replaced, self.identity.fingerprint))


def decide_pin(
    url: str,
    pin: Pin | None,
    presented: dict[str, Any],
    *,
    given: PublicIdentity | None,
    rotations: Sequence[ServiceRotation],
    pin_file: str,
    now: int,
) -> Pin:
    """The pin to keep after the service at ``url`` presented ``presented``
    (its self-signed identity document); raises :class:`ServiceIdentityError`."""
    # (1) the service's document is self-consistent and self-signed
    identity = PublicIdentity.from_document(presented)
    fp = identity.fingerprint
    # (2) a key given out of band must be the one presented
    if given is not None and given.fingerprint != fp:
        raise ServiceIdentityError(
            f"the service at {url} presents key {fp}, not the service key you gave "
            f"({given.fingerprint})"
        )
    # (3) first use: pin what was given, or what was presented
    if pin is None:
        how = "given" if given is not None else "first use"
        return Pin(identity, presented, now, how)
    # (4) the pinned key itself
    if fp == pin.identity.fingerprint:
        return pin
    # (5) otherwise only a chain of rotations, each signed by the key it replaces
    current, document = pin.identity, pin.document
    replaced: list[dict[str, Any]] = []
    used: list[ServiceRotation] = []
    by_old = {r.old: r for r in rotations}
    while current.fingerprint != fp and current.fingerprint in by_old:
        step = by_old.pop(current.fingerprint)
        replaced.append(document)
        current, document = step.verify(current), step.document["payload"]["to"]
        used.append(step)
    if current.fingerprint != fp:
        raise ServiceIdentityError(
            f"the service at {url} presents key {fp}, but {pin_file} pins key "
            f"{pin.identity.fingerprint} ({pin.how}) and no rotation statement signed by "
            f"the pinned key names the new one: refused as a possible fork. Keep {pin_file} "
            "as evidence; see docs/service.md (Service identity)"
        )
    return Pin(
        identity,
        presented,
        now,
        "rotation",
        (*pin.previous, *replaced),
        (*pin.rotations, *(r.document for r in used)),
    )
