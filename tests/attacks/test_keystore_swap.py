"""A swapped keystore: someone replaces a party's ``keystore.json`` with one
holding other keys (unprotected, so it loads without the passphrase the party
types, or protected by nobody). The party's state records, on first use, which
identity it belongs to and whether its keystore had a passphrase; a keystore
that differs is refused before anything is signed with it. The SDK and the
command line, against a real ``cleanroom serve``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cleanroom import Party
from cleanroom.client import PIN_FILE, Client
from cleanroom.client.state import KEYSTORE_RECORD_FILE
from cleanroom.errors import AuthenticationError, IntegrityError, KeystoreError
from cleanroom.identities.keystore import IDENTITY_FILE, KEYSTORE_FILE, KdfParams
from cleanroom.service.local import local_service

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # the test's own, not a default
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a test passphrase


def swap(keystore: Path, other: Party, passphrase: str | None = None) -> None:
    """What the attacker does: put another party's keystore files in place."""
    stage = Path(tempfile.mkdtemp(dir=keystore.parent)) / other.name
    staged = other.save(stage, passphrase=passphrase, params=FAST)
    for name in (KEYSTORE_FILE, IDENTITY_FILE):
        (keystore / name).unlink()
        shutil.copy2(staged / name, keystore / name)


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **env}
    full.pop("CLEANROOM_SERVICE_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_a_protected_keystore_swapped_for_an_unprotected_one_is_refused(tmp_path: Path) -> None:
    victim, attacker = Party.create("bank"), Party.create("attacker")
    keystore = victim.save(tmp_path / "keys" / "bank", passphrase=PASSPHRASE, params=FAST)
    with local_service(tmp_path / "data") as url:
        with Client(url, keystore, passphrase=PASSPHRASE) as client:  # first use: recorded
            room = client.create_room("r", [(victim.identity_document(), ["data_provider"])])
        state = {p.name: p.read_bytes() for p in (keystore / "state").iterdir() if p.is_file()}
        assert KEYSTORE_RECORD_FILE in state
        swap(keystore, attacker)  # unprotected: it would load whatever passphrase is typed
        assert Party.load(keystore, passphrase=PASSPHRASE).fingerprint == attacker.fingerprint
        # (1) the SDK refuses it, naming what changed; nothing is signed with its keys
        with pytest.raises(KeystoreError, match=r"no passphrase.*swapped"):
            Client(url, keystore, passphrase=PASSPHRASE)
        # (2) so does the command line (which would not even ask for a passphrase)
        shown = cli(
            "room", "list", "--service", url, "--as", str(keystore), cwd=tmp_path,
            env={"CLEANROOM_PASSPHRASE": PASSPHRASE},
        )  # fmt: skip
        assert shown.returncode == 4  # authentication (docs/cli.md)
        assert "swapped" in " ".join(shown.stderr.split())
        assert room.id not in shown.stdout
        # (3) the attacker's key never reached the service, and the state is untouched
        with (
            Client(url, attacker, state_dir=tmp_path / "attacker") as probe,
            pytest.raises(AuthenticationError, match="unknown key"),
        ):
            probe.rooms()
        after = {p.name: p.read_bytes() for p in (keystore / "state").iterdir() if p.is_file()}
        assert after == state
        # (4) nothing lost: with its own keystore back, the party goes on as before
        swap(keystore, victim, passphrase=PASSPHRASE)
        with Client(url, keystore, passphrase=PASSPHRASE) as client:
            assert [r.room for r in client.rooms()] == [room.id]


def test_a_keystore_holding_another_identity_is_refused(tmp_path: Path) -> None:
    victim, attacker = Party.create("bank"), Party.create("attacker")
    keystore = victim.save(tmp_path / "keys" / "bank")  # no passphrase at all
    with local_service(tmp_path / "data") as url:
        Client(url, keystore).close()
        swap(keystore, attacker)
        with pytest.raises(KeystoreError, match=r"holds identity.*swapped"):
            Client(url, keystore)
        # the attacker's own passphrase changes nothing: it is still another identity
        swap(keystore, attacker, passphrase="attacker's own")
        with pytest.raises(KeystoreError, match=r"holds identity.*swapped"):
            Client(url, keystore, passphrase="attacker's own")
        # a party's state moved next to another keystore is refused the same way
        elsewhere = Party.create("carol").save(tmp_path / "keys" / "carol")
        shutil.copytree(keystore / "state", elsewhere / "state")
        with pytest.raises(KeystoreError, match="holds identity"):
            Client(url, elsewhere)


def test_the_record_cannot_be_edited_and_a_passphrase_may_be_added(tmp_path: Path) -> None:
    party = Party.create("bank")
    keystore = party.save(tmp_path / "keys" / "bank")
    with local_service(tmp_path / "data") as url:
        Client(url, keystore).close()
        record = keystore / "state" / KEYSTORE_RECORD_FILE
        assert json.loads(record.read_text())["payload"]["protected"] is False
        # adding a passphrase (same keys) is fine, and from then on it is required
        (keystore / KEYSTORE_FILE).unlink()
        (keystore / IDENTITY_FILE).unlink()
        party.save(keystore, passphrase=PASSPHRASE, params=FAST)
        Client(url, keystore, passphrase=PASSPHRASE).close()
        assert json.loads(record.read_text())["payload"]["protected"] is True
        (keystore / KEYSTORE_FILE).unlink()
        (keystore / IDENTITY_FILE).unlink()
        party.save(keystore)
        with pytest.raises(KeystoreError, match="no passphrase"):
            Client(url, keystore)
        # editing the record (to say "unprotected") breaks its signature
        document = json.loads(record.read_text())
        document["payload"]["protected"] = False
        record.write_text(json.dumps(document))
        with pytest.raises(IntegrityError, match=KEYSTORE_RECORD_FILE):
            Client(url, keystore)
        assert (keystore / "state" / PIN_FILE).exists()
