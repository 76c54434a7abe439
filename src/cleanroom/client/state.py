"""What a member remembers between runs: pinned service keys and tree heads.

Layout of a party's state directory (by default ``KEYSTORE/state``)::

    service-pins.json   the service key pinned per service URL, with the keys
                        it replaced and the rotation statements that did so
    tree-heads.json     per room: the last tree head accepted, and the
                        identity of the service key that signed it
    keystore-record.json  the identity this state belongs to, and whether its
                        keystore was protected by a passphrase: a keystore
                        swapped for another (other keys, or no passphrase where
                        there was one) is refused with KeystoreError

Both files are signed by the party's own key, so an edited, truncated or
swapped file is an error naming the file; it is never silently replaced by a
fresh pin or an empty history. Tree heads are kept per room, not per service
key or URL: a room last seen under one key must show a head signed by that
key or a key it rotated to, and one that extends the head seen (RFC 9162
consistency), whichever URL serves it. Without a directory the same rules
hold for the life of the client only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cleanroom.client.trust import Pin, ServiceIdentityError, ServiceRotation, decide_pin
from cleanroom.errors import (
    CleanroomError,
    DeserializationError,
    IntegrityError,
    KeystoreError,
    StorageError,
)
from cleanroom.fs import write_private_file
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import KEYSTORE_FILE, Party
from cleanroom.ledger.entries import TreeHead
from cleanroom.ledger.merkle import MerkleTree
from cleanroom.ledger.verify import VerifiedLedger, check_extends
from cleanroom.wire import read_json_file

PIN_FILE = "service-pins.json"
HEADS_FILE = "tree-heads.json"
KEYSTORE_RECORD_FILE = "keystore-record.json"
KEYSTORE_RECORD_TYP = "cleanroom-keystore-record+jws"
PINS_TYP = "cleanroom-service-pins+jws"
HEADS_TYP = "cleanroom-tree-heads+jws"
_LEGACY_HEADS = "tree-heads.{fp16}.json"  # before pins: one file per service key


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ClientState:
    """A party's pins and tree heads, in ``directory`` or (``None``) in memory."""

    def __init__(self, party: Party, directory: Path | None) -> None:
        self.party = party
        self.directory = directory
        if directory is not None:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create state directory {directory}") from exc
        recorded = self._check_keystore()  # before any other file is trusted
        self._pins: dict[str, Pin] = self._read_pins()
        self._heads: dict[str, tuple[PublicIdentity, dict[str, Any], TreeHead]] = self._read_heads()
        self._record_keystore(recorded)

    # -- the keystore this state belongs to ------------------------------------------

    def _keystore(self) -> Path | None:
        """The keystore directory this state sits in (``KEYSTORE/state``), if any."""
        if self.directory is None or not (self.directory.parent / KEYSTORE_FILE).exists():
            return None
        return self.directory.parent

    def _check_keystore(self) -> dict[str, Any] | None:
        """Refuse a keystore other than the one this state was first used with.

        (1) a keystore that was protected by a passphrase then and is not now was
        swapped (an unprotected one loads silently, with whatever keys it holds);
        (2) a keystore holding another identity was swapped; (3) the record itself
        is signed by the identity it names, so an edited record is an error too.
        Returns the record's payload (None: no record yet)."""
        if self.directory is None or not (self.directory / KEYSTORE_RECORD_FILE).exists():
            return None
        path, keystore = self.directory / KEYSTORE_RECORD_FILE, self._keystore()
        try:
            document = read_json_file(path, what="client state file")
        except DeserializationError:
            document = None
        claimed = document.get("payload") if isinstance(document, dict) else None
        if not isinstance(claimed, dict) or not isinstance(claimed.get("party"), str):
            return self._load(KEYSTORE_RECORD_FILE, KEYSTORE_RECORD_TYP)  # damaged: raises
        where = keystore if keystore is not None else "(given in memory)"
        unprotected = keystore is not None and not Party.is_protected(keystore)
        if claimed.get("protected") is True and unprotected:  # (1)
            raise KeystoreError(
                f"the keystore at {keystore} has no passphrase, but it had one when it was "
                f"first used ({path}): it may have been swapped for another; refused"
            )
        if claimed.get("party") != self.party.fingerprint:  # (2)
            raise KeystoreError(
                f"the keystore at {where} holds identity {self.party.fingerprint}, but "
                f"{self.directory} was first used with {claimed.get('party')!r} ({path}): it "
                "may have been swapped for another; refused"
            )
        return self._load(KEYSTORE_RECORD_FILE, KEYSTORE_RECORD_TYP)  # (3)

    def _record_keystore(self, recorded: dict[str, Any] | None) -> None:
        """Record the keystore on first use (once the other state files verified), and
        that it is protected once it is (a passphrase is never silently dropped)."""
        keystore = self._keystore()
        protected = Party.is_protected(keystore) if keystore is not None else None
        if recorded is not None and (recorded.get("protected") is True or not protected):
            return
        body = {"format": "cleanroom-keystore-record", "protected": protected}
        self._save(KEYSTORE_RECORD_FILE, KEYSTORE_RECORD_TYP, body)

    # -- files ---------------------------------------------------------------------

    def file(self, name: str) -> str:
        return str(self.directory / name) if self.directory is not None else f"(memory) {name}"

    @property
    def pin_file(self) -> str:
        return self.file(PIN_FILE)

    def _load(self, name: str, typ: str) -> dict[str, Any] | None:
        """The payload of one of our signed files; a damaged file raises, naming it."""
        if self.directory is None or not (self.directory / name).exists():
            return None
        path = self.directory / name
        hint = (
            "restore it from a backup, or remove it only if you re-check the service key "
            "out of band (docs/service.md, Service identity)"
        )
        try:
            document = read_json_file(path, what="client state file")
            payload = self.party.identity.verify(document, typ=typ)
            if payload.get("party") != self.party.fingerprint:
                raise IntegrityError("it belongs to another party")
        except StorageError:
            raise
        except CleanroomError as exc:
            raise IntegrityError(
                f"{path} is truncated, edited or not yours ({exc}); it was left as it is: {hint}"
            ) from exc
        return payload

    def _save(self, name: str, typ: str, body: dict[str, Any]) -> None:
        if self.directory is None:
            return
        payload = {"party": self.party.fingerprint, **body}
        document = self.party.sign_document(payload, typ=typ)
        write_private_file(self.directory / name, json.dumps(document, indent=2).encode() + b"\n")

    def _read_pins(self) -> dict[str, Pin]:
        payload = self._load(PIN_FILE, PINS_TYP)
        if payload is None:
            return {}
        try:
            return {url: _pin_from_json(p) for url, p in payload["pins"].items()}
        except (CleanroomError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{self.pin_file} is not a valid pin file: {exc}") from exc

    def _read_heads(self) -> dict[str, tuple[PublicIdentity, dict[str, Any], TreeHead]]:
        payload = self._load(HEADS_FILE, HEADS_TYP)
        if payload is None:
            return {}
        heads = {}
        try:
            for room, kept in payload["heads"].items():
                signer = PublicIdentity.from_document(kept["service"])
                head = TreeHead.verify(kept["tree_head"], signer, room=room)
                heads[room] = (signer, kept["service"], head)
        except (CleanroomError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{self.file(HEADS_FILE)} holds an invalid head: {exc}") from exc
        return heads

    def _write_heads(self) -> None:
        if self.directory is not None and (self.directory / HEADS_FILE).exists():
            # another client of this party may have saved since: keep the longer head
            for room, (signer, document, head) in self._read_heads().items():
                mine = self._heads.get(room)
                if mine is None or (head.size, head.time) > (mine[2].size, mine[2].time):
                    self._heads[room] = (signer, document, head)
        body = {
            room: {"service": document, "tree_head": head.token}
            for room, (_, document, head) in sorted(self._heads.items())
        }
        self._save(HEADS_FILE, HEADS_TYP, {"format": "cleanroom-tree-heads", "heads": body})

    # -- the service key -----------------------------------------------------------

    def trust(
        self,
        url: str,
        presented: dict[str, Any],
        *,
        given: PublicIdentity | None = None,
        rotations: Sequence[ServiceRotation] = (),
        now: int | None = None,
    ) -> Pin:
        """Check the key the service at ``url`` presents against the pin, pin it on
        first use or after a verified rotation, and return the pin in force."""
        old = self._pins.get(url)
        pin = decide_pin(
            url,
            old,
            presented,
            given=given,
            rotations=rotations,
            pin_file=self.pin_file,
            now=now if now is not None else _now_ms(),
        )
        if pin is not old:
            if old is None:
                self._import_legacy_heads(pin)
            current = self._read_pins()  # keep what other clients pinned meanwhile
            current[url] = pin
            self._pins = current
            body = {url: _pin_to_json(p) for url, p in sorted(current.items())}
            self._save(PIN_FILE, PINS_TYP, {"format": "cleanroom-service-pins", "pins": body})
        return pin

    def _import_legacy_heads(self, pin: Pin) -> None:
        """Heads an older SDK kept per service key (they were verified when kept)."""
        if self.directory is None:
            return
        service, document = pin.identity, pin.document
        legacy = self.directory / _LEGACY_HEADS.format(fp16=service.fingerprint[:16])
        if not legacy.exists() or (self.directory / HEADS_FILE).exists():
            return
        for room, token in read_json_file(legacy, what="known tree heads").items():
            self._heads[room] = (service, document, TreeHead.verify(token, service, room=room))
        self._write_heads()

    # -- tree heads, per room ------------------------------------------------------

    def last(self, room: str) -> TreeHead | None:
        kept = self._heads.get(room)
        return kept[2] if kept is not None else None

    def check_room(self, room: str, pin: Pin, url: str) -> None:
        """Raise unless ``room`` was last seen under a key this service's pin covers."""
        kept = self._heads.get(room)
        if kept is not None and kept[0].fingerprint not in pin.fingerprints:
            raise ServiceIdentityError(
                f"room {room} was last seen with tree heads signed by service key "
                f"{kept[0].fingerprint} ({self.file(HEADS_FILE)}), but the service at {url} "
                f"presents key {pin.identity.fingerprint} with no rotation from it: refused "
                "as a possible fork"
            )

    def observe(
        self,
        head: TreeHead,
        pin: Pin,
        url: str,
        proof: Callable[[int, int], list[bytes]],
    ) -> TreeHead:
        """Accept ``head`` (already verified under ``pin``'s key) only if it extends
        the last head of its room; raises ``RollbackError``/``ForkError`` otherwise."""
        self.check_room(head.room, pin, url)
        kept = self._heads.get(head.room)
        if kept is not None:
            old = kept[2]
            check_extends(old, head, proof(old.size, head.size) if head.size > old.size else [])
            if head == old:
                return head
        self._heads[head.room] = (pin.identity, pin.document, head)
        self._write_heads()
        return head

    def observe_verified(self, verified: VerifiedLedger, pin: Pin, url: str) -> TreeHead:
        tree = MerkleTree([e.leaf_hash for e in verified.entries])
        return self.observe(verified.head, pin, url, tree.consistency_proof)


def _pin_to_json(pin: Pin) -> dict[str, Any]:
    return {
        "identity": pin.document,
        "pinned_at": pin.pinned_at,
        "how": pin.how,
        "previous": list(pin.previous),
        "rotations": list(pin.rotations),
    }


def _pin_from_json(data: dict[str, Any]) -> Pin:
    identity = PublicIdentity.from_document(data["identity"])
    previous, rotations = tuple(data["previous"]), tuple(data["rotations"])
    # (1) the rotation chain that led here still verifies, each step by the key it replaced
    chain = [PublicIdentity.from_document(d) for d in previous] + [identity]
    if len(rotations) != len(previous):
        raise IntegrityError("the pin's rotation chain is incomplete")
    for step, old, new in zip(rotations, chain, chain[1:], strict=False):
        if ServiceRotation.parse(step).verify(old).fingerprint != new.fingerprint:
            raise IntegrityError("the pin's rotation chain does not connect")
    return Pin(
        identity, data["identity"], int(data["pinned_at"]), str(data["how"]), previous, rotations
    )
