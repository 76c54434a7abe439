"""A member announces more ciphertext than its quota: the upload is refused on
the declared size, before a byte is accepted; what it stored before stays."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from cleanroom import Party, Schema
from cleanroom.client import Client
from cleanroom.errors import RateLimitedError
from cleanroom.service.local import local_service

SCHEMA = Schema.from_json(
    {
        "identity_column": "id",
        "columns": [
            {"name": "id", "type": "string", "nullable": False},
            {"name": "note", "type": "string"},
        ],
    }
)


def test_uploads_past_a_members_quota_are_refused_before_any_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bank = Party.create("bank")
    small = pa.table({"id": ["a", "b"], "note": ["x", "y"]})
    big = pa.table(
        {
            "id": [f"p{i}" for i in range(20_000)],
            "note": [os.urandom(64).hex() for _ in range(20_000)],
        }
    )
    with (
        local_service(data, env={"CLEANROOM_MEMBER_QUOTA_BYTES": "200000"}) as url,
        Client(url, bank, state_dir=tmp_path / "bank") as client,
    ):
        room = client.create_room("r", [(bank.identity_document(), ["data_provider"])])
        room.publish_dataset(small, schema=SCHEMA, name="small")
        before = {p.name for p in (data / "blobs").rglob("*") if p.is_file()}
        with pytest.raises(RateLimitedError, match="quota"):
            room.publish_dataset(big, schema=SCHEMA, name="big")
        after = {p.name for p in (data / "blobs").rglob("*") if p.is_file()}
        assert after == before  # nothing of the refused upload was kept
        assert len(before) == 1  # and the earlier dataset is still there
