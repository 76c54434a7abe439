"""What the ``cleanroom`` command says, and how it exits, when something fails.

One handler (:func:`explain`) turns any exception a command raises into one
readable line, a hint chosen by the *cause* (the OS error or network error
underneath, the message of a refusal, which option named the path) rather
than by the exception's class alone, and one exit code of :data:`EXIT_CODES`.

Invariants: it never raises; it imports nothing heavy (httpx and the SDK are
recognised through ``sys.modules``, so a failure before they load costs
nothing); an exception it does not recognise is a bug in cleanroom, reported
as such with exit status 70, never as the user's mistake.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import (
    AttestationError,
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    ForkError,
    GovernanceError,
    IntegrityError,
    InvalidInputError,
    KeystoreError,
    NotFoundError,
    OperationalError,
    PolicyError,
    RateLimitedError,
    RollbackError,
    SchemaError,
    ValidationError,
)

OK = 0
REFUSED = 1  # the room's rules, a policy, or a security check said no
USAGE = 2  # the command line or an input file is wrong
NOT_FOUND = 3  # a file, room, member, proposal, job, dataset or analysis does not exist
AUTH = 4  # who you are (keystore, passphrase, signature) or what you may do
UNAVAILABLE = 5  # the service, the network, the disk or the port: retrying may help
BUG = 70  # an unexpected error inside cleanroom (EX_SOFTWARE)
INTERRUPTED = 130  # Ctrl-C

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (REFUSED, "refused: the room's rules, a privacy rule or a security check"),
    (USAGE, "usage or bad input: an option, a file's format, data against its schema"),
    (NOT_FOUND, "not found: a file, room, member, proposal, job, dataset or analysis"),
    (AUTH, "authentication or authorization: keystore, passphrase, membership, role"),
    (UNAVAILABLE, "unavailable: the service, network, disk or port; retrying may help"),
    (BUG, "a bug in cleanroom (rerun with CLEANROOM_DEBUG=1 for the traceback)"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)
DEBUG_ENV = "CLEANROOM_DEBUG"
BUG_HINT = f"this is a bug; rerun with {DEBUG_ENV}=1 for the traceback"


@dataclass(frozen=True)
class Failure:
    message: str
    hint: str | None
    code: int


def exit_codes_epilog() -> str:
    lines = "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    return f"Exit status (docs/cli.md):\n{lines}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is(exc: BaseException, module: str, name: str) -> bool:
    """``isinstance(exc, module.name)`` without importing ``module``."""
    loaded = sys.modules.get(module)
    kind = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(kind, type) and isinstance(exc, kind)


def _named_by(path: str, params: Mapping[str, str]) -> str | None:
    """The option (or argument, or environment variable) whose value names ``path``."""
    best: tuple[int, str] | None = None
    for label, given in params.items():
        value = given.rstrip("/")
        matches = path == value or path.startswith(value + "/") or value.startswith(path + ":")
        if value and matches and (best is None or len(value) > best[0]):
            best = (len(value), label)
    return best[1] if best else None


def _mentioned(message: str, params: Mapping[str, str]) -> tuple[str, str] | None:
    """The (option, value) whose value the message quotes, the longest first."""
    found = [(label, v) for label, v in params.items() if len(v) > 1 and v in message]
    return max(found, key=lambda f: len(f[1])) if found else None


def _os_failure(  # noqa: PLR0911 - one return per cause
    exc: CleanroomError | None, os_error: OSError, params: Mapping[str, str]
) -> Failure:
    path = str(os_error.filename) if os_error.filename is not None else ""
    label = _named_by(path, params) if path else None
    given = f" ({label} names it)" if label else ""
    if os_error.errno == errno.EADDRINUSE:
        port = params.get("--port") or "the port"
        return Failure(
            f"cannot listen: {port} is already in use",
            "another process (another `cleanroom serve`?) listens there: choose another "
            "--port, or stop that process",
            UNAVAILABLE,
        )
    if isinstance(os_error, FileNotFoundError):
        message = str(exc) if exc is not None else f"{path} does not exist"
        return Failure(
            message, f"check the path{given}; relative paths start at {Path.cwd()}", NOT_FOUND
        )
    if isinstance(os_error, IsADirectoryError):
        message = str(exc) if exc is not None else f"{path} is a directory, not a file"
        if (Path(path) / "identity.json").is_file():
            hint = (
                f"{path} is a keystore directory{given}; a file is expected here: "
                f"its public identity is {Path(path) / 'identity.json'}"
            )
        else:
            hint = f"a file is expected{given}, not a directory"
        return Failure(message, hint, USAGE)
    if isinstance(os_error, NotADirectoryError):
        message = str(exc) if exc is not None else f"{path} is not a directory"
        file = next((p for p in Path(path).parents if p.is_file()), None)
        what = f"{file} is a file, but" if file is not None else "here"
        return Failure(message, f"{what} a directory is expected{given}", USAGE)
    if isinstance(os_error, PermissionError):
        message = str(exc) if exc is not None else f"permission denied: {path}"
        return Failure(
            message, f"check the permissions of {path or 'the file'}{given}", UNAVAILABLE
        )
    if os_error.errno == errno.ENOSPC:
        return Failure(str(exc or os_error), "free some disk space and retry", UNAVAILABLE)
    if isinstance(os_error, ConnectionError):
        return _unreachable(str(exc or os_error), params, refused=True)
    message = (
        str(exc) if exc is not None else f"{os_error.strerror or os_error}: {path}".rstrip(": ")
    )
    return Failure(message, f"check the path{given}, free disk space and permissions", UNAVAILABLE)


def _service(params: Mapping[str, str]) -> tuple[str, str]:
    url = params.get("--service") or params.get("CLEANROOM_SERVICE (--service)") or "the URL"
    source = "CLEANROOM_SERVICE" if "CLEANROOM_SERVICE (--service)" in params else "--service"
    return url, source


def _unreachable(message: str, params: Mapping[str, str], *, refused: bool) -> Failure:
    url, source = _service(params)
    if refused:
        hint = (
            f"is the service running at {url}? start one with `cleanroom serve`, "
            f"or give its URL with {source}"
        )
    else:
        hint = f"the service at {url} did not answer in time: check the network and retry"
    return Failure(message, hint, UNAVAILABLE)


def _network(exc: BaseException, params: Mapping[str, str]) -> Failure | None:
    for cause in _chain(exc):
        if _is(cause, "httpx", "TimeoutException"):
            return _unreachable(str(exc), params, refused=False)
        if _is(cause, "httpx", "UnsupportedProtocol") or _is(cause, "httpx", "InvalidURL"):
            url, source = _service(params)
            return Failure(
                f"{url!r} is not a service URL ({cause})",
                f"give {source} as http://HOST:PORT, e.g. http://127.0.0.1:8321",
                USAGE,
            )
        if _is(cause, "httpx", "TransportError"):
            return _unreachable(str(exc), params, refused=True)
    return None


_THINGS = ("room", "member", "proposal", "job", "dataset", "analysis")
_LISTS = {
    "room": "cleanroom room list",
    "member": "cleanroom member list --room ROOM",
    "proposal": "cleanroom proposal list --all --room ROOM",
    "job": "cleanroom job list --room ROOM",
    "dataset": "cleanroom dataset list --room ROOM",
    "analysis": "cleanroom analysis list --room ROOM",
}


def _not_found(exc: NotFoundError) -> Failure:
    message = str(exc)
    thing = next((t for t in _THINGS if re.search(rf"\b{t}s?\b", message)), None)
    if "matches" in message and "give more characters" in message:
        hint = "give more characters of the id, or the name"
    elif thing is not None:
        hint = f"see what exists with `{_LISTS[thing]}`; names and unique id prefixes work too"
    else:
        hint = "check the name or id"
    return Failure(message, hint, NOT_FOUND)


def _keystore(exc: KeystoreError, params: Mapping[str, str]) -> Failure:
    message = str(exc)
    named = _mentioned(message, params)
    given = f" ({named[0]})" if named else ""
    if "wrong passphrase" in message:
        return Failure(message, "set CLEANROOM_PASSPHRASE to the keystore's passphrase", AUTH)
    if "passphrase is needed" in message:
        return Failure(message, "export CLEANROOM_PASSPHRASE=... or run in a terminal", AUTH)
    if message.startswith("no keystore"):
        return Failure(
            message,
            f"give a keystore directory{given} made by `cleanroom party create NAME --dir DIR`",
            NOT_FOUND,
        )
    if "chmod" in message:
        return Failure(message, "the message says how to fix the permissions", AUTH)
    return Failure(message, f"check the keystore directory{given}", AUTH)


def _policy_hint(params: Mapping[str, str]) -> str:
    sql = params.get("--sql")
    where = f"fix {sql} and " if sql else ""
    return (
        f"{where}check it against the inputs' rules with `cleanroom analysis check` "
        "before proposing; docs/privacy.md explains each rule"
    )


def _governance(exc: GovernanceError, params: Mapping[str, str]) -> Failure:
    message = str(exc)
    lowered = message.lower()
    policy_words = ("sql", "rule", "aggregat", "threshold", "column", "epsilon", "budget")
    if isinstance(exc, PolicyError) or any(w in lowered for w in policy_words):
        return Failure(message, _policy_hint(params), REFUSED)
    if "not open" in lowered or "accepted" in lowered or "rejected" in lowered:
        hint = "the proposal is closed; see `cleanroom proposal list --all`"
    elif "consent" in lowered:
        hint = "the owner revoked consent; see `cleanroom room show` (owners restore it by vote)"
    elif "role" in lowered:
        hint = "see each member's roles with `cleanroom member list`"
    else:
        hint = (
            "the room's current state does not allow it: see `cleanroom room show` "
            "and `cleanroom proposal list`"
        )
    return Failure(message, hint, REFUSED)


def _cleanroom(exc: CleanroomError, params: Mapping[str, str]) -> Failure:  # noqa: PLR0911
    message = str(exc)
    if _is(exc, "cleanroom.client.trust", "ServiceIdentityError"):
        return Failure(
            message,
            "the service presents another key than the one pinned for it: check its key out "
            "of band (docs/service.md) before giving --service-key",
            REFUSED,
        )
    if isinstance(exc, ForkError):
        return Failure(
            message, "the ledger showed two histories; keep both exports as evidence", REFUSED
        )
    if isinstance(exc, RollbackError):
        return Failure(
            message,
            "the ledger lost entries it had shown before; keep both exports as evidence",
            REFUSED,
        )
    if isinstance(exc, AttestationError):
        return Failure(
            message,
            "the enclave's evidence does not meet the room's contract; see docs/attestation.md",
            REFUSED,
        )
    if isinstance(exc, IntegrityError) and "passphrase" in message:
        return Failure(message, "set CLEANROOM_PASSPHRASE to the keystore's passphrase", AUTH)
    if isinstance(exc, IntegrityError):
        named = _mentioned(message, params)
        what = f"{named[1]} ({named[0]})" if named else "the files or answers"
        return Failure(
            message, f"{what} were modified, or belong to another party, room or dataset", REFUSED
        )
    if isinstance(exc, KeystoreError):
        return _keystore(exc, params)
    if isinstance(exc, NotFoundError):
        return _not_found(exc)
    if isinstance(exc, GovernanceError):
        return _governance(exc, params)
    if isinstance(exc, AuthenticationError):
        if "unknown key" in message:
            hint = "the service knows only rooms' members: check --as, or ask a member to add you"
        elif "clock" in message or "stale" in message or "expired" in message:
            hint = "check this machine's clock"
        else:
            hint = "check --as (your keystore) and that you belong to the room"
        return Failure(message, hint, AUTH)
    if isinstance(exc, AuthorizationError):
        return Failure(
            message,
            "only members with the right role may do this: see `cleanroom member list`",
            AUTH,
        )
    if isinstance(exc, RateLimitedError):
        return Failure(message, "too many requests: wait a little and retry", UNAVAILABLE)
    if isinstance(exc, ValidationError):
        return Failure(message, "fix the data or its schema; nothing was written", USAGE)
    if isinstance(exc, SchemaError):
        return Failure(message, "see docs/datasets.md for the schema format", USAGE)
    if isinstance(exc, DeserializationError):
        if message.startswith("the service's answer"):
            url, _ = _service(params)
            return Failure(message, f"is {url} a cleanroom service?", UNAVAILABLE)
        named = _mentioned(message, params)
        given = f" given with {named[0]}" if named else ""
        return Failure(message, f"the file{given} is not in the expected format", USAGE)
    if isinstance(exc, InvalidInputError):
        return Failure(message, None, USAGE)
    if isinstance(exc, OperationalError) and "still" in message and "job" in message:
        return Failure(message, "check on it later with `cleanroom job status`", UNAVAILABLE)
    return Failure(
        message, "check the service, the network, free disk space and permissions", UNAVAILABLE
    )


# the optional parts of the install (pyproject.toml extras) and the modules that need them
EXTRAS = {
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "h11": "server",
    "pydantic_settings": "server",
    "opendp": "dp",
    "psycopg": "postgres",
}


def _missing_extra(exc: BaseException) -> Failure | None:
    """A module of an optional extra that is not installed: name the extra."""
    found = next((c for c in _chain(exc) if isinstance(c, ModuleNotFoundError)), None)
    root = (found.name or "").split(".")[0] if found is not None else ""
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    return Failure(
        f"this needs the {extra!r} part of cleanroom, which is not installed ({root} is missing)",
        f"pip install 'confidential-cleanroom[{extra}]' (see docs/install.md)",
        UNAVAILABLE,
    )


def explain(exc: BaseException, params: Mapping[str, str] | None = None) -> Failure:
    """The line, hint and exit status for ``exc``. ``params`` maps each option
    (``--as``), argument (``SOURCE``) or environment variable of the command
    that failed to the value it was given, to say which one named a path."""
    params = params or {}
    try:
        if isinstance(exc, KeyboardInterrupt):
            return Failure("interrupted", None, INTERRUPTED)
        early = _missing_extra(exc) or _network(exc, params)
        if early is not None:
            return early
        cleanroom = exc if isinstance(exc, CleanroomError) else None
        os_error = next((c for c in _chain(exc) if isinstance(c, OSError)), None)
        if os_error is not None and (cleanroom is None or isinstance(cleanroom, OperationalError)):
            return _os_failure(cleanroom, os_error, params)
        if cleanroom is not None:
            return _cleanroom(cleanroom, params)
    except Exception as inner:  # noqa: BLE001 - the handler itself must never fail
        return Failure(f"{type(exc).__name__}: {exc} (and {inner!r} explaining it)", BUG_HINT, BUG)
    return Failure(f"unexpected {type(exc).__name__}: {exc}", BUG_HINT, BUG)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
