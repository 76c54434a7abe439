"""What a releaser (the attested broker, an owner's key agent) remembers of its own
releases, so the operator cannot make it release a job twice.

The ledger is the releaser's only view of the room, and the operator carries
every statement to it. An operator who keeps a signed ``key.release`` off the
ledger and asks again (a second enclave for the same job, or the next job of
a DP analysis whose budget the withheld release never charged) would see a
ledger that still asks for keys. So a releaser keeps, per job, the enclave
and nonce it released to and the digests of the releases it signed, and
before answering anything in a room it looks for them in the verified ledger:

1. a release not on the ledger for a job still waiting: only that same
   enclave and nonce may be answered (with the same statement again), and
   no other job of the room until the release is recorded;
2. a release not on the ledger for a job that no longer waits (failed or run
   without it): the operator withheld it. The room is refused for good, by
   this releaser.

The broker keeps this in memory (it lives as long as its key); an owner's
agent in a file of its state directory.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.errors import GovernanceError, IntegrityError
from cleanroom.fs import write_file
from cleanroom.governance.state import RoomState
from cleanroom.wire import read_json_file


class WithheldError(IntegrityError):
    """A release this party signed was kept off the ledger: the room is refused."""


@dataclass
class _Released:
    enclave: str
    nonce: str
    statements: dict[str, str] = field(default_factory=dict)  # digest -> signed token


class ReleaseMemory:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._rooms: dict[str, dict[str, _Released]] = {}
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        if path is not None and path.exists():
            self._load(path)

    def check(self, state: RoomState, job: str, enclave: str, nonce: str) -> str | None:
        """Before answering ``job`` in the room of ``state`` (verified): raise
        :class:`WithheldError` if this party's release was withheld, else return a
        release already signed for this job, enclave and nonce but not yet on the
        ledger (send it again), or raise :class:`GovernanceError` when nothing may be
        answered now. None: answer afresh."""
        recorded = state.seen
        with self._lock:
            if state.room in self._refused:
                raise WithheldError("a release signed for this room was withheld: refused")
            pending = {}
            for job_id, released in self._rooms.get(state.room, {}).items():
                missing = {d: t for d, t in released.statements.items() if d not in recorded}
                if not missing:
                    continue
                found = state.jobs.get(job_id)
                if found is None or found.status != "requested":
                    self._refused.add(state.room)
                    self._save()
                    raise WithheldError(
                        f"the release signed for job {job_id[:12]}... never reached the "
                        "ledger and the job no longer waits: withheld, the room is refused"
                    )
                pending[job_id] = (released, missing)
        if not pending:
            return None
        if set(pending) != {job}:
            raise GovernanceError("an earlier release is not on the ledger yet: wait for it")
        released, missing = pending[job]
        if (released.enclave, released.nonce) != (enclave, nonce):
            raise GovernanceError("this job's keys were released to another enclave")
        return next(iter(missing.values()))

    def remember(self, room: str, job: str, enclave: str, nonce: str, token: str) -> None:
        """Record a release just signed (before it is sent)."""
        from cleanroom.governance.statements import statement_digest  # noqa: PLC0415

        with self._lock:
            jobs = self._rooms.setdefault(room, {})
            released = jobs.setdefault(job, _Released(enclave, nonce))
            if (released.enclave, released.nonce) != (enclave, nonce):
                raise GovernanceError("this job's keys were released to another enclave")
            released.statements[statement_digest(token)] = token
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "refused": sorted(self._refused),
            "rooms": {
                room: {
                    job: {"enclave": r.enclave, "nonce": r.nonce, "statements": r.statements}
                    for job, r in jobs.items()
                }
                for room, jobs in self._rooms.items()
            },
        }
        write_file(self.path, json.dumps(document, indent=1).encode())

    def _load(self, path: Path) -> None:
        document = read_json_file(path, what="released keys")
        try:
            self._refused = {str(r) for r in document["refused"]}
            for room, jobs in document["rooms"].items():
                self._rooms[room] = {
                    job: _Released(str(r["enclave"]), str(r["nonce"]), dict(r["statements"]))
                    for job, r in jobs.items()
                }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise IntegrityError(f"{path} is not a record of released keys: {exc}") from exc
