"""Backup and restore exactly as docs/deploy.md says: a running ``cleanroom
serve``, a room with entries and a dataset's ciphertext, a backup taken while it
runs (``python -m cleanroom.service.backup``), restored into a new data
directory, served again at the same address. The room's export verifies with
the same tree head, the ciphertext is intact, and a member's client, with the
service key and the tree heads it pinned before, trusts the restored service.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from cleanroom import Party, Schema
from cleanroom.client import Client
from cleanroom.errors import StorageError
from cleanroom.service.backup import backup
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


def test_a_backup_taken_while_running_restores_a_room_members_still_trust(
    tmp_path: Path,
) -> None:
    bank, merchant = Party.create("bank"), Party.create("merchant")
    data, saved, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    port = free_port()
    with (
        local_service(data, port=port) as url,
        Client(url, bank, state_dir=tmp_path / "bank") as owner,
        Client(url, merchant, state_dir=tmp_path / "merchant") as other,
    ):
        room = owner.create_room(
            "offers",
            [
                (bank.identity_document(), ["data_provider", "result_recipient"]),
                (merchant.identity_document(), ["analyst"]),
            ],
        )
        other.room(room.id).accept()
        rows = pa.table({"card_id": [f"c{i}" for i in range(30)], "amount": list(range(30))})
        room.approve(room.publish_dataset(rows, schema=SCHEMA, name="cards"))
        digest = room.state()["datasets"][0]["versions"][0]["sha256"]
        before = room.audit.verify()
        # the documented command, while the service runs
        subprocess.run(
            [sys.executable, "-m", "cleanroom.service.backup", str(data), str(saved)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert (saved / "service" / "keystore.json").stat().st_mode & 0o077 == 0
    assert not list((saved / "blobs").glob(".upload-*"))
    # the data directory is lost; the backup goes to a new one (cp -a BACKUP DATA)
    shutil.rmtree(data)
    shutil.copytree(saved, restored)
    with (
        local_service(restored, port=port) as url,
        Client(url, bank, state_dir=tmp_path / "bank") as owner,
    ):
        room = owner.room(room.id)
        after = room.audit.verify()  # offline, against the pinned key and tree heads
        assert (after.head.size, after.head.root) == (before.head.size, before.head.root)
        assert [e.to_json() for e in after.entries] == [e.to_json() for e in before.entries]
        room.download(digest, tmp_path / "cards.bin")
        assert hashlib.sha256((tmp_path / "cards.bin").read_bytes()).hexdigest() == digest
        # and the restored service goes on: a new entry extends the old history
        room.propose({"type": "set_measurements", "measurements": []})
        assert room.audit.verify().head.size > before.head.size


def test_a_backup_never_overwrites_and_needs_a_data_directory(tmp_path: Path) -> None:
    (tmp_path / "data" / "service").mkdir(parents=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(StorageError, match="a backup goes to a new directory"):
        backup(tmp_path / "data", tmp_path / "taken")
    with pytest.raises(StorageError, match="not a cleanroom data directory"):
        backup(tmp_path / "taken", tmp_path / "new")
