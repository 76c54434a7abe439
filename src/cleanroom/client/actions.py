"""Governance actions built from typed arguments (pure): what the typed methods of
:class:`cleanroom.client.Room` propose.

Each builder returns the action as the ledger signs it (a JSON object, the
``action`` of a ``proposal.create`` statement) after checking it against the
same wire model the room's state machine parses it with
(:data:`cleanroom.governance.statements.Action`), so a mistyped argument is one
:class:`DeserializationError` naming the field before anything is signed.
Names are already resolved here: members are fingerprints, datasets and
analyses are names (the room resolves them from what it lists).

:data:`TYPED` maps every action type to the room method that proposes it, so a
test can check no action is left without one.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cleanroom.errors import DeserializationError
from cleanroom.governance import statements as st
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.wire import WireModel, parse_model, read_json_file

# every action type (statements.Action) -> the Room method proposing it
TYPED: Mapping[str, str] = {
    "add_member": "add_member",
    "remove_member": "remove_member",
    "register_dataset": "publish_dataset",
    "set_analysis_rule": "set_analysis_rule",
    "add_analysis": "propose_analysis",
    "retire_analysis": "retire_analysis",
    "set_measurements": "propose_measurements",
    "set_privacy_budget": "set_privacy_budget",
    "set_limits": "set_limits",
    "change_constitution": "change_constitution",
    "restore_consent": "restore_consent",
}

IdentityLike = Mapping[str, Any] | Party | str | os.PathLike[str]
MeasurementLike = str | tuple[str, str] | Mapping[str, Any]


def _models() -> dict[str, type[WireModel]]:
    """Each action type's wire model, from the union the room parses proposals with."""
    union = typing.get_args(typing.get_args(st.Action)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in union}


MODELS: Mapping[str, type[WireModel]] = _models()


def checked(action: dict[str, Any]) -> dict[str, Any]:
    """``action`` itself, once the room's own model for its type accepts it."""
    parse_model(MODELS[action["type"]], action, what=f"the {action['type']} action")
    return action


def as_json(value: Any, what: str) -> dict[str, Any]:
    """A rule, DP specification or terms given as a dict or as its wire model."""
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped: dict[str, Any] = dump(exclude_none=True)
        return dumped
    raise TypeError(f"{what} is a dict (see docs/sdk.md), not {type(value).__name__}")


def identity_document(member: IdentityLike) -> dict[str, Any]:
    """A party's self-signed identity document: given as is, read from an identity
    file (``cleanroom party export``), or taken from a loaded :class:`Party`. Its
    self-signature is checked here: it goes on the ledger."""
    if isinstance(member, Party):
        return member.identity_document()
    if isinstance(member, str | os.PathLike):
        document = read_json_file(Path(member), what="identity file")
    elif isinstance(member, Mapping):
        document = dict(member)
    else:
        raise TypeError(
            "a member is an identity document, an identity file's path or a Party, "
            f"not {type(member).__name__}"
        )
    PublicIdentity.from_document(document)
    if not isinstance(document, dict):  # from_document refused anything else already
        raise DeserializationError("the identity document is not a JSON object")
    return document


def measurement(spec: MeasurementLike) -> dict[str, Any]:
    """``"sev-snp:5f2c..."``, ``("sev-snp", "5f2c...")`` or ``{"platform", "value"}``."""
    if isinstance(spec, str):
        platform, sep, value = spec.partition(":")
        if platform == "insecure-virtual" and value.startswith(st.VIRTUAL_PREFIX):
            pass  # "insecure-virtual:insecure-virtual:<hex>", as the platform reports it
        elif platform == "insecure-virtual" and sep:
            value = st.VIRTUAL_PREFIX + value
        if not sep or not value:
            raise DeserializationError(f"measurement {spec!r}: write PLATFORM:HEX")
        return {"platform": platform, "value": value}
    if isinstance(spec, tuple):
        platform, value = spec
        return {"platform": platform, "value": value}
    return dict(spec)


def add_member(identity: Mapping[str, Any], roles: Iterable[str]) -> dict[str, Any]:
    return checked({"type": "add_member", "identity": dict(identity), "roles": list(roles)})


def remove_member(fingerprint: str) -> dict[str, Any]:
    return checked({"type": "remove_member", "member": fingerprint})


def add_analysis(
    name: str,
    text: str,
    inputs: Sequence[str],
    recipients: Sequence[str],
    dp: Mapping[str, Any] | None,
    *,
    language: str = "sql",
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "type": "add_analysis",
        "name": name,
        "language": language,
        "text": text,
        "inputs": list(inputs),
        "recipients": list(recipients),
    }
    if dp is not None:
        action["dp"] = dict(dp)
    return checked(action)


def retire_analysis(name: str) -> dict[str, Any]:
    return checked({"type": "retire_analysis", "name": name})


def set_measurements(
    measurements: Iterable[Mapping[str, Any]],
    *,
    allow_insecure_virtual: bool,
    terms: Mapping[str, Any] | None,
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "type": "set_measurements",
        "measurements": [dict(m) for m in measurements],
        "allow_insecure_virtual": allow_insecure_virtual,
    }
    if terms is not None:
        action["terms"] = dict(terms)
    return checked(action)


def set_analysis_rule(dataset: str, rule: Mapping[str, Any]) -> dict[str, Any]:
    return checked({"type": "set_analysis_rule", "dataset": dataset, "rule": dict(rule)})


def set_privacy_budget(dataset: str, epsilon: float, delta: float) -> dict[str, Any]:
    return checked(
        {"type": "set_privacy_budget", "dataset": dataset, "epsilon": epsilon, "delta": delta}
    )


def set_limits(
    time_s: int,
    memory_mb: int,
    max_result_rows: int,
    *,
    max_scoring_jobs: int | None = None,
    max_scored_rows: int | None = None,
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "type": "set_limits",
        "time_s": time_s,
        "memory_mb": memory_mb,
        "max_result_rows": max_result_rows,
    }
    if max_scoring_jobs is not None:
        action["max_scoring_jobs"] = max_scoring_jobs
    if max_scored_rows is not None:
        action["max_scored_rows"] = max_scored_rows
    return checked(action)


def change_constitution(rule: str, k: int | None, proposal_ttl_hours: int) -> dict[str, Any]:
    constitution: dict[str, Any] = {"rule": rule, "proposal_ttl_hours": proposal_ttl_hours}
    if k is not None:
        constitution["k"] = k
    return checked({"type": "change_constitution", "constitution": constitution})


def restore_consent(dataset: str) -> dict[str, Any]:
    return checked({"type": "restore_consent", "dataset": dataset})
