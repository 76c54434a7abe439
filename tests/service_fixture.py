"""The PostgreSQL server for the backend tests (the service process itself comes
from :func:`cleanroom.service.local.local_service`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_URL = os.environ.get(
    "CLEANROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema on the test PostgreSQL server; skips (or fails where
    CLEANROOM_REQUIRE_POSTGRES=1) when no server answers."""
    import secrets  # noqa: PLC0415

    import psycopg  # noqa: PLC0415
    import pytest  # noqa: PLC0415

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"no PostgreSQL server at {POSTGRES_URL}: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("CLEANROOM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CLEANROOM_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    schema = f"cleanroom_test_{secrets.token_hex(6)}"
    try:
        yield POSTGRES_URL, schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
