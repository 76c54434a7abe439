"""The service's identity, pinned per URL: forks under a new key, rotations and
damaged pin files, against a real service process (SDK and command line)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from cleanroom import Party, PublicIdentity, Schema
from cleanroom.client import (
    HEADS_FILE,
    PIN_FILE,
    Client,
    Room,
    ServiceIdentityError,
    sign_service_rotation,
)
from cleanroom.client.trust import ROTATION_TYP, Pin, ServiceRotation, decide_pin
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.errors import IntegrityError, RollbackError
from cleanroom.ledger.entries import Entry, TreeHead
from cleanroom.ledger.local import SERVICE_DIR, open_ledger, service_identity_file, service_party
from cleanroom.service.local import free_port, local_service

SCHEMA = Schema.from_json(
    {
        "identity_column": "card_id",
        "columns": [
            {"name": "card_id", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64", "min": 0},
        ],
    }
)
NOW = 1_800_000_000_000

OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def connect(url: str, keystore: Path, **options: object) -> Client:
    opened = Client(url, keystore, **options)  # type: ignore[arg-type]
    OPEN.append(opened)
    return opened


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {n: Party.create(n).save(tmp_path / "keys" / n) for n in ("bank", "merchant")}


def cli(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    for name in ("CLEANROOM_PASSPHRASE", "CLEANROOM_SERVICE_KEY"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def flat(text: str) -> str:
    """Terminal output with its line wrapping undone."""
    return " ".join(text.split())


def revoked_room(url: str, keys: dict[str, Path]) -> Room:
    """bank + merchant; the merchant registers a dataset, then revokes consent."""
    bank, merchant = connect(url, keys["bank"]), connect(url, keys["merchant"])
    room = bank.create_room(
        "offers",
        [
            (bank.party.identity_document(), ["data_provider", "result_recipient"]),
            (merchant.party.identity_document(), ["data_provider"]),
        ],
    )
    theirs = merchant.room(room.id)
    theirs.accept()
    table = pa.table({"card_id": [f"card-{i}" for i in range(20)], "amount": list(range(20))})
    pid = theirs.publish_dataset(table, schema=SCHEMA, name="customers")
    theirs.approve(pid)
    room.approve(pid)
    theirs.revoke_consent("customers")
    assert [d["consent"] for d in room.state()["datasets"]] == [False]
    room.audit.verify()  # the bank has seen the revocation: its tree head covers it
    return room


def rewrite(source: Path, target: Path, *, drop: str, key: Party) -> None:
    """The operator's attack: the same member-signed statements but one, replayed
    into a new ledger whose tree heads a new service key signs."""
    old = open_ledger(source)
    rooms = {room: old.entries(room) for room in old.rooms()}
    old.store.close()
    key.save(target / SERVICE_DIR)
    new = open_ledger(target)
    for room, entries in rooms.items():
        new.create_room(entries[0].statement)
        kept = [e.statement for e in entries[1:] if drop not in statement_kinds(e)]
        new.submit(room, kept)
        new.tree_head(room)
    new.store.close()
    shutil.copytree(source / "blobs", target / "blobs")


def statement_kinds(entry: Entry) -> str:
    from cleanroom.governance.statements import parse_statement  # noqa: PLC0415

    return parse_statement(entry.statement).kind


def rotate(source: Path, target: Path, key: Party) -> None:
    """An honest rotation: the same ledger, its tree heads re-signed by the new key."""
    old_key = service_party(source)
    shutil.copytree(source, target)
    shutil.rmtree(target / SERVICE_DIR)
    key.save(target / SERVICE_DIR)
    with sqlite3.connect(target / "ledger.sqlite3") as db:
        rows = db.execute("SELECT id, room, token FROM tree_heads").fetchall()
        for row_id, room, token in rows:
            head = TreeHead.verify(token, old_key.identity, room=room)
            resigned = TreeHead.sign(key, room, head.size, head.root, head.time)
            db.execute("UPDATE tree_heads SET token = ? WHERE id = ?", (resigned.token, row_id))


def rotation_file(path: Path, old: Party, new: Party, *, signer: Party | None = None) -> Path:
    document = sign_service_rotation(old, new.identity_document(), now=NOW)
    if signer is not None:  # a forgery: names ``old`` as its signer, signed by another key
        body = canonical_json(document["payload"])
        document["signature"] = jws.sign_detached(
            body, signer.signing_private, kid=old.fingerprint, typ=ROTATION_TYP
        )
    path.write_text(json.dumps(document))
    return path


# -- the attack ------------------------------------------------------------------------


def test_a_history_rewritten_under_a_new_key_is_refused_loudly(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """Regression: the SDK and every online command used to accept this silently."""
    port, first, forged = free_port(), tmp_path / "data", tmp_path / "forged"
    with local_service(first, port=port) as url:
        room = revoked_room(url, keys)
    pinned = service_party(first).fingerprint
    attacker = Party.create("ledger")
    rewrite(first, forged, drop="consent.revoke", key=attacker)
    pin_file = keys["bank"] / "state" / PIN_FILE
    before = pin_file.read_bytes()
    with local_service(forged, port=port) as url:
        # the SDK: the key differs from the pin, whatever the ledger says
        with pytest.raises(ServiceIdentityError) as caught:
            connect(url, keys["bank"])
        message = str(caught.value)
        assert pinned in message
        assert attacker.fingerprint in message
        assert str(pin_file) in message
        # every online command: the same error, exit status 1
        for command in (
            ["room", "show", "--room", room.id],
            ["room", "list"],
            ["dataset", "list", "--room", room.id],
            ["proposal", "list", "--room", room.id],
            ["job", "list", "--room", room.id],
            ["audit", "export", "--room", room.id, "-o", "x.json"],
        ):
            shown = cli(
                *command, "--service", url, "--as", str(keys["bank"]), cwd=tmp_path, ok=False
            )
            assert shown.returncode == 1, (command, shown.stdout)
            said = flat(shown.stderr)
            assert pinned in said, command
            assert attacker.fingerprint in said, command
            assert str(pin_file) in said, command
        assert not (tmp_path / "x.json").exists()
    assert pin_file.read_bytes() == before  # never silently re-pinned
    # at another URL the key is new (pinned on first use), but the room is not:
    # its tree heads were signed by the old key, with no rotation to the new one
    with local_service(forged) as other:
        with pytest.raises(ServiceIdentityError, match=f"room {room.id}.*{pinned}"):
            connect(other, keys["bank"]).room(room.id)
        shown = cli(
            "room", "show", "--room", room.id, "--service", other, "--as", str(keys["bank"]),
            cwd=tmp_path, ok=False,
        )  # fmt: skip
        assert shown.returncode == 1
        assert "possible fork" in flat(shown.stderr)


# -- rotations ---------------------------------------------------------------------------


def test_a_rotation_signed_by_the_old_key_is_accepted(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    port, first, rotated = free_port(), tmp_path / "data", tmp_path / "rotated"
    with local_service(first, port=port) as url:
        room = revoked_room(url, keys)
        cli("room", "show", "--room", room.id, "--service", url, "--as", str(keys["merchant"]),
            cwd=tmp_path)  # fmt: skip
    old, new = service_party(first), Party.create("ledger")
    rotate(first, rotated, new)
    rotation = rotation_file(tmp_path / "service.rotation.json", old, new)
    with local_service(rotated, port=port) as url:
        with pytest.raises(ServiceIdentityError):
            connect(url, keys["bank"])  # not without the rotation statement
        bank = connect(url, keys["bank"], service_key=rotation)
        assert bank.service.fingerprint == new.fingerprint
        assert bank.pin.how == "rotation"
        handle = bank.room(room.id)
        handle.tree_head()  # the room's heads continue across the keys
        handle.propose({"type": "set_measurements", "measurements": []})
        assert handle.audit.verify().state.digest()
        # pinned now: the next run needs nothing
        assert connect(url, keys["bank"]).pin.identity.fingerprint == new.fingerprint
        # the command line takes the same statement with --service-key
        shown = cli(
            "--service-key", str(rotation), "room", "show", "--room", room.id,
            "--service", url, "--as", str(keys["merchant"]), cwd=tmp_path,
        )  # fmt: skip
        assert "offers" in shown.stdout
        cli("room", "show", "--room", room.id, "--service", url, "--as", str(keys["merchant"]),
            cwd=tmp_path)  # fmt: skip


def test_a_rotation_does_not_launder_a_rewritten_history(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """Even with a valid rotation, a room's history must extend what was seen."""
    port, first, forged = free_port(), tmp_path / "data", tmp_path / "forged"
    with local_service(first, port=port) as url:
        room = revoked_room(url, keys)
    old, new = service_party(first), Party.create("ledger")
    rewrite(first, forged, drop="consent.revoke", key=new)
    rotation = rotation_file(tmp_path / "service.rotation.json", old, new)
    with local_service(forged, port=port) as url:
        bank = connect(url, keys["bank"], service_key=rotation)
        with pytest.raises(RollbackError, match="6 entries but showed 7"):
            bank.room(room.id).tree_head()  # the dropped revocation is missed


@pytest.mark.parametrize("signer", ["new key", "a member", "the operator's other key"])
def test_a_rotation_signed_by_anyone_else_is_refused(
    tmp_path: Path, keys: dict[str, Path], signer: str
) -> None:
    port, first, rotated = free_port(), tmp_path / "data", tmp_path / "rotated"
    with local_service(first, port=port) as url:
        connect(url, keys["bank"])  # pins the first key
    old, new = service_party(first), Party.create("ledger")
    rotate(first, rotated, new)
    forger = {
        "new key": new,
        "a member": Party.load(keys["bank"]),
        "the operator's other key": Party.create("ledger"),
    }[signer]
    forged = rotation_file(tmp_path / "service.rotation.json", old, new, signer=forger)
    pin_file = keys["bank"] / "state" / PIN_FILE
    before = pin_file.read_bytes()
    with local_service(rotated, port=port) as url:
        with pytest.raises(ServiceIdentityError, match="not signed by the pinned key"):
            connect(url, keys["bank"], service_key=forged)
        shown = cli(
            "--service-key", str(forged), "room", "list", "--service", url,
            "--as", str(keys["bank"]), cwd=tmp_path, ok=False,
        )  # fmt: skip
        assert "not signed by the pinned key" in flat(shown.stderr)
    assert pin_file.read_bytes() == before


def test_rotation_rules_table() -> None:
    """The pure decision, without a service: chains, strangers and given keys."""
    k1, k2, k3, other = (Party.create("ledger") for _ in range(4))
    pin = decide_pin(
        "u", None, k1.identity_document(), given=None, rotations=(), pin_file="f", now=NOW
    )
    assert pin.how == "first use"

    def rot(old: Party, new: Party) -> ServiceRotation:
        return ServiceRotation.parse(sign_service_rotation(old, new.identity_document(), now=NOW))

    def decide(presented: Party, *rotations: ServiceRotation, given: Party | None = None) -> Pin:
        return decide_pin(
            "u",
            pin,
            presented.identity_document(),
            given=given.identity if given is not None else None,
            rotations=rotations,
            pin_file="f",
            now=NOW,
        )

    assert decide(k1) is pin
    two_steps = decide(k3, rot(k2, k3), rot(k1, k2))  # in any order
    assert two_steps.fingerprints == {k1.fingerprint, k2.fingerprint, k3.fingerprint}
    with pytest.raises(ServiceIdentityError, match="no rotation statement"):
        decide(k3, rot(k1, k2))  # the chain stops short
    with pytest.raises(ServiceIdentityError, match="no rotation statement"):
        decide(k2, rot(other, k2))  # from a key that was never pinned
    with pytest.raises(ServiceIdentityError, match="no rotation statement"):
        decide(k2, given=k2)  # a key given out of band does not override a pin
    with pytest.raises(ServiceIdentityError, match="not the service key you gave"):
        decide(k1, given=k2)


# -- pins and state on disk ----------------------------------------------------------------


def test_state_is_kept_next_to_the_keystore_unless_told_otherwise(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    with local_service(data) as url:
        identity = PublicIdentity.load(service_identity_file(data))
        client = connect(url, keys["bank"], service_key=service_identity_file(data))
        assert client.pin.how == "given"
        room = client.create_room("r", [(client.party.identity_document(), ["data_provider"])])
        assert {PIN_FILE, HEADS_FILE} <= {p.name for p in (keys["bank"] / "state").iterdir()}
        elsewhere = tmp_path / "elsewhere"
        other = connect(url, keys["bank"], state_dir=elsewhere)
        assert other.service == identity
        assert (elsewhere / PIN_FILE).exists()
        assert not (elsewhere / HEADS_FILE).exists()  # another party view, started afresh
        # a loaded Party without state_dir remembers only while it lives
        in_memory = Client(url, Party.load(keys["bank"]))
        OPEN.append(in_memory)
        in_memory.room(room.id).tree_head()
        assert in_memory.state_dir is None
        # a wrong key given out of band is refused even before anything is pinned
        with pytest.raises(ServiceIdentityError, match="not the service key you gave"):
            connect(url, keys["merchant"], service_key=Party.create("ledger").identity)
        assert not (keys["merchant"] / "state" / PIN_FILE).exists()


def _flip(path: Path) -> None:
    document = json.loads(path.read_text())
    pins = document["payload"]["pins"]
    first = next(iter(pins.values()))
    first["pinned_at"] += 1
    path.write_text(json.dumps(document))


def _swap(path: Path) -> None:
    """Replace the pinned key by another valid, self-signed service identity."""
    document = json.loads(path.read_text())
    for pin in document["payload"]["pins"].values():
        pin["identity"] = Party.create("ledger").identity_document()
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (PIN_FILE, lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
        (PIN_FILE, lambda p: p.write_bytes(b"")),
        (PIN_FILE, _flip),
        (PIN_FILE, _swap),
        (PIN_FILE, lambda p: shutil.copy(p.parent.parent.parent / "merchant/state" / PIN_FILE, p)),
        (HEADS_FILE, lambda p: p.write_bytes(p.read_bytes()[:-40])),
        (HEADS_FILE, lambda p: p.write_text(p.read_text().replace('": "ey', '": "ez', 1))),
    ],
    ids=[
        "truncated", "empty", "edited", "swapped key", "another party's", "heads truncated",
        "heads edited",
    ],
)  # fmt: skip
def test_a_damaged_state_file_is_an_error_never_a_re_pin(
    tmp_path: Path, keys: dict[str, Path], name: str, damage: object
) -> None:
    data = tmp_path / "data"
    with local_service(data) as url:
        for party in ("bank", "merchant"):
            client = connect(url, keys[party])
            client.create_room("r", [(client.party.identity_document(), ["data_provider"])])
        path = keys["bank"] / "state" / name
        damage(path)  # type: ignore[operator]
        damaged = path.read_bytes()
        with pytest.raises(IntegrityError) as caught:
            connect(url, keys["bank"])
        assert str(path) in str(caught.value)
        assert not isinstance(caught.value, ServiceIdentityError)
        shown = cli("room", "list", "--service", url, "--as", str(keys["bank"]), cwd=tmp_path,
                    ok=False)  # fmt: skip
        assert shown.returncode == 1
        assert str(path) in flat(shown.stderr)
        assert path.read_bytes() == damaged  # left as it was, for the member to look at
