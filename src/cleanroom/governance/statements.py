"""Signed statements: every act of a party in a room.

A statement is a compact JWS (``typ: cleanroom-statement+jws``) signed by its
author, over the RFC 8785 form of::

    {"room": <room id>, "kind": <kind>, "author": <fingerprint>,
     "nonce": <16 random bytes>, "created_at": <ms>, "body": {...}}

The room id binds a statement to one room; the nonce makes every statement
unique, so the ledger can refuse a replayed one by its digest (SHA-256 of the
token). Bodies are parsed here, at the edge, into typed models; the state
machine in :mod:`cleanroom.governance.state` decides whether they are allowed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat, StrictInt, StrictStr

from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_encode, parse_json
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.identities.keystore import Party
from cleanroom.wire import WireModel, parse_model

STATEMENT_TYP = "cleanroom-statement+jws"
Role = Literal["data_provider", "analyst", "result_recipient", "observer"]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RoomId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")]


class ConstitutionBody(WireModel):
    rule: Literal["default", "unanimity", "majority", "threshold"] = "default"
    k: StrictInt | None = Field(default=None, ge=1)
    proposal_ttl_hours: StrictInt = Field(default=168, ge=1, le=24 * 365)


class MemberBody(WireModel):
    identity: dict[str, Any]
    roles: list[Role] = Field(min_length=1, max_length=4)


class RoomCreate(WireModel):
    name: Name
    constitution: ConstitutionBody
    members: list[MemberBody] = Field(min_length=1, max_length=200)


class MemberAccept(WireModel):
    invitation: Digest


# -- proposal actions ------------------------------------------------------------


class AddMember(WireModel):
    type: Literal["add_member"]
    identity: dict[str, Any]
    roles: list[Role] = Field(min_length=1, max_length=4)


class RemoveMember(WireModel):
    type: Literal["remove_member"]
    member: Digest


class RegisterDataset(WireModel):
    type: Literal["register_dataset"]
    manifest: dict[str, Any]


class AddAnalysis(WireModel):
    type: Literal["add_analysis"]
    name: Name
    language: Literal["sql"]
    text: StrictStr = Field(min_length=1, max_length=100_000)
    inputs: list[Name] = Field(min_length=1, max_length=32)
    recipients: list[Digest] = Field(min_length=1, max_length=32)


class RetireAnalysis(WireModel):
    type: Literal["retire_analysis"]
    name: Name


class Measurement(WireModel):
    platform: Literal["sev-snp", "tdx", "sgx", "insecure-virtual"]
    value: StrictStr = Field(pattern=r"^[0-9a-f]{64,128}$")


class SetMeasurements(WireModel):
    type: Literal["set_measurements"]
    measurements: list[Measurement] = Field(max_length=64)


class SetPrivacyBudget(WireModel):
    type: Literal["set_privacy_budget"]
    dataset: Name
    epsilon: StrictFloat | StrictInt = Field(gt=0, le=100)
    delta: StrictFloat | StrictInt = Field(default=0.0, ge=0, lt=1)


class ChangeConstitution(WireModel):
    type: Literal["change_constitution"]
    constitution: ConstitutionBody


class RestoreConsent(WireModel):
    type: Literal["restore_consent"]
    dataset: Name


Action = Annotated[
    AddMember
    | RemoveMember
    | RegisterDataset
    | AddAnalysis
    | RetireAnalysis
    | SetMeasurements
    | SetPrivacyBudget
    | ChangeConstitution
    | RestoreConsent,
    Field(discriminator="type"),
]


class ProposalCreate(WireModel):
    action: Action


class Ballot(WireModel):
    proposal: Digest
    vote: Literal["approve", "reject"]


class ProposalWithdraw(WireModel):
    proposal: Digest


class ConsentRevoke(WireModel):
    dataset: Name


BODIES: dict[str, type[WireModel]] = {
    "room.create": RoomCreate,
    "member.accept": MemberAccept,
    "proposal.create": ProposalCreate,
    "ballot": Ballot,
    "proposal.withdraw": ProposalWithdraw,
    "consent.revoke": ConsentRevoke,
}
Kind = Literal[
    "room.create",
    "member.accept",
    "proposal.create",
    "ballot",
    "proposal.withdraw",
    "consent.revoke",
]


class _Payload(WireModel):
    room: RoomId
    kind: Kind
    author: Digest
    nonce: StrictStr = Field(min_length=22, max_length=22)
    created_at: StrictInt = Field(ge=0)
    body: dict[str, Any]


@dataclass(frozen=True)
class Statement:
    """A parsed statement. Its signature is checked by the state machine,
    which knows the author's key."""

    token: str
    digest: str
    room: str
    kind: str
    author: str
    created_at: int
    body: Any
    parsed: jws.ParsedToken

    def __repr__(self) -> str:
        return f"Statement({self.kind}, author={self.author[:12]}..., digest={self.digest[:12]}...)"


def statement_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def parse_statement(token: str) -> Statement:
    """Parse a statement's structure and body; raises, never checks the signature."""
    parsed = jws.parse(token, typ=STATEMENT_TYP)
    try:
        raw = parse_json(parsed.payload, what="statement")
    except DeserializationError as exc:
        raise IntegrityError(f"malformed statement: {exc}") from exc
    payload = parse_model(_Payload, raw, what="statement")
    if payload.author != parsed.kid:
        raise IntegrityError("statement author does not match its signing key id")
    body = parse_model(BODIES[payload.kind], payload.body, what=f"{payload.kind} statement")
    return Statement(
        token=token,
        digest=statement_digest(token),
        room=payload.room,
        kind=payload.kind,
        author=payload.author,
        created_at=payload.created_at,
        body=body,
        parsed=parsed,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def sign_statement(
    party: Party,
    room: str,
    kind: str,
    body: dict[str, Any],
    *,
    now: Callable[[], int] = _now_ms,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Sign a statement as ``party``. The body is validated before signing."""
    if kind not in BODIES:
        raise ValueError(f"unknown statement kind {kind!r}")
    parse_model(BODIES[kind], body, what=f"{kind} statement")
    payload = {
        "room": room,
        "kind": kind,
        "author": party.fingerprint,
        "nonce": b64url_encode(rng(16)),
        "created_at": now(),
        "body": body,
    }
    return jws.sign(
        canonical_json(payload), party.signing_private, kid=party.fingerprint, typ=STATEMENT_TYP
    )


__all__ = [
    "Action",
    "Ballot",
    "ConstitutionBody",
    "Statement",
    "parse_statement",
    "sign_statement",
    "statement_digest",
]


# -- recipes: one function per act, for the SDK and the CLI ------------------------------

Clock = Callable[[], int]


def new_room_id(rng: Callable[[int], bytes] = os.urandom) -> str:
    return rng(16).hex()


def room_create(
    party: Party,
    room: str,
    *,
    name: str,
    members: list[tuple[dict[str, Any], list[str]]],
    constitution: dict[str, Any] | None = None,
    now: Clock = _now_ms,
) -> str:
    """``members``: (identity document, roles) pairs, the creator included."""
    body = {
        "name": name,
        "constitution": constitution or {"rule": "default"},
        "members": [{"identity": identity, "roles": roles} for identity, roles in members],
    }
    return sign_statement(party, room, "room.create", body, now=now)


def member_accept(party: Party, room: str, invitation: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "member.accept", {"invitation": invitation}, now=now)


def propose(party: Party, room: str, action: dict[str, Any], *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "proposal.create", {"action": action}, now=now)


def vote(party: Party, room: str, proposal: str, *, approve: bool, now: Clock = _now_ms) -> str:
    body = {"proposal": proposal, "vote": "approve" if approve else "reject"}
    return sign_statement(party, room, "ballot", body, now=now)


def withdraw(party: Party, room: str, proposal: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "proposal.withdraw", {"proposal": proposal}, now=now)


def revoke_consent(party: Party, room: str, dataset: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "consent.revoke", {"dataset": dataset}, now=now)
