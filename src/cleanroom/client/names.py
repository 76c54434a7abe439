"""Names and unique prefixes for what a room holds (pure).

Rooms, members, datasets, analyses, proposals and jobs are named in the CLI
and the SDK alike by their exact name (where they have one), their full id, or
a unique prefix of their id (at least :data:`MIN_PREFIX` hex characters, so a
short typo never matches by chance). A hex-shaped reference is an id, never a
name. The SDK resolves against the room's verified ledger, not the service's
word, wherever what it signs depends on the answer. A reference that matches nothing or more than
one thing is refused with the candidates named, never guessed; where nothing
matches but a proposal still open would create it, the refusal says so.

Every resolver takes the plain views the service returns (lists of dicts), so
the CLI and the SDK resolve the same way from the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cleanroom.errors import NotFoundError

MIN_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]+")
_PLURAL = {"analysis": "analyses"}


class AmbiguousNameError(NotFoundError):
    """A name or prefix that matches more than one thing."""


def _clean(ref: str) -> str:
    return ref.strip().replace(":", "").lower()


def _pick(
    what: str,
    ref: str,
    items: Iterable[Mapping[str, Any]],
    *,
    key: str,
    name: str | None = None,
    pending: Callable[[str], str | None] | None = None,
    prefixes: bool = True,
) -> Mapping[str, Any]:
    """The one item ``ref`` names; raises :class:`NotFoundError` or
    :class:`AmbiguousNameError`.

    A hex-shaped reference (``prefixes``) is read as an id or a unique id prefix
    only, never as a name, so a member who names itself like another's
    fingerprint cannot capture references to it. Any other reference must equal
    a name exactly (a name is never matched by its prefix: ``spend`` is not
    ``spend_eu``)."""
    items = list(items)
    given = ref.strip()
    if not given:
        raise NotFoundError(f"name a {what}: an empty reference matches nothing")
    wanted = _clean(ref)
    if prefixes and _HEX.fullmatch(wanted) and len(wanted) >= MIN_PREFIX:
        matches = [i for i in items if str(i.get(key, "")).lower() == wanted] or [
            i for i in items if str(i.get(key, "")).lower().startswith(wanted)
        ]
    else:
        field = name if name is not None else key
        matches = [i for i in items if str(i.get(field, "")) == given]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(sorted(str(i.get(key, ""))[:16] for i in matches)[:5])
        raise AmbiguousNameError(
            f"{given!r} matches {len(matches)} {_PLURAL.get(what, what + 's')} ({shown}): "
            "give more characters of the id"
        )
    hint = pending(given) if pending is not None else None
    if hint:
        raise NotFoundError(f"no {what} {given!r} yet: {hint}")
    if prefixes and _HEX.fullmatch(wanted) and len(wanted) < MIN_PREFIX:
        raise NotFoundError(
            f"no {what} {given!r}: an id prefix needs at least {MIN_PREFIX} characters"
        )
    known = sorted(str(i.get(name or key, "")) for i in items)
    listed = ", ".join(k if name else k[:16] for k in known[:8]) or "none"
    raise NotFoundError(f"no {what} {given!r} (known: {listed})")


def _pending_proposal(
    proposals: Iterable[Mapping[str, Any]], kind: str, field: str
) -> Callable[[str], str | None]:
    def find(ref: str) -> str | None:
        for p in proposals:
            action = p.get("action") or {}
            if p.get("status") == "open" and p.get("type") == kind:
                value = action.get(field)
                if kind == "register_dataset":
                    payload = (action.get("manifest") or {}).get("payload") or {}
                    value = payload.get("name")
                if value == ref:
                    return f"proposal {str(p.get('id', ''))[:16]} ({kind}) awaits approval"
        return None

    return find


def room_id(rooms: Iterable[Mapping[str, Any]], ref: str) -> str:
    """A room's id from its name, its id or a unique id prefix (``GET /v1/rooms``)."""
    return str(_pick("room", ref, rooms, key="room", name="name")["room"])


def member_fingerprint(members: Iterable[Mapping[str, Any]], ref: str) -> str:
    """A member's fingerprint from its name, fingerprint or a unique prefix."""
    return str(_pick("member", ref, members, key="fingerprint", name="name")["fingerprint"])


def proposal_id(proposals: Iterable[Mapping[str, Any]], ref: str) -> str:
    """A proposal's id from its id or a unique prefix."""
    return str(_pick("proposal", ref, proposals, key="id")["id"])


def job_id(jobs: Iterable[Mapping[str, Any]], ref: str) -> str:
    """A job's id from its id or a unique prefix."""
    return str(_pick("job", ref, jobs, key="id")["id"])


def dataset_name(
    datasets: Iterable[Mapping[str, Any]],
    ref: str,
    proposals: Iterable[Mapping[str, Any]] = (),
) -> str:
    """A registered dataset's name; names a pending registration if there is one."""
    pending = _pending_proposal(list(proposals), "register_dataset", "name")
    found = _pick("dataset", ref, datasets, key="name", pending=pending, prefixes=False)
    return str(found["name"])


def analysis_name(
    analyses: Iterable[Mapping[str, Any]],
    ref: str,
    proposals: Iterable[Mapping[str, Any]] = (),
) -> str:
    """An approved analysis's name; names a pending proposal for it if there is one."""
    pending = _pending_proposal(list(proposals), "add_analysis", "name")
    found = _pick("analysis", ref, analyses, key="name", pending=pending, prefixes=False)
    return str(found["name"])
