"""An analysis run on this machine, over mock data, by the enclave's own job kinds
(ADR 0023): what a model owner or an analyst proposes has already run once.

:func:`run_locally` seals each table under a fresh key into a private temporary
directory and calls the job kind the enclave would call
(:data:`cleanroom.enclave.runtime.KINDS`): the same engine settings and limits,
the same confined child for a Python bundle (so a bundle that needs the network
or a file outside its inputs fails here as it would there), the same model
loader and checks for scoring and training. Nothing is attested, recorded or
sealed to anyone: the tables are the caller's own (mock rows from the inputs'
schemas, :meth:`cleanroom.client.Room.try_analysis`; a vendor's own model).

A failure is raised as the enclave raises it; its message stays on this machine
(it is the caller's own mock data), and :func:`cleanroom.enclave.failures.category_of`
names the category a job would record.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from cleanroom.datasets.parquet import connect, write_encrypted
from cleanroom.datasets.seal import model_table
from cleanroom.enclave.sql import Input, JobResult, Limits
from cleanroom.errors import PolicyError
from cleanroom.models.manifest import ModelManifest

# what a local try may take: a mock is small, and a laptop is not an enclave host
LOCAL_LIMITS = Limits(time_s=300.0, memory="2GB", max_result_rows=1_000_000)


def run_locally(
    language: str,
    text: str,
    tables: Mapping[str, pa.Table],
    *,
    models: Mapping[str, tuple[bytes, ModelManifest]] | None = None,
    limits: Limits = LOCAL_LIMITS,
) -> JobResult:
    """Run ``text`` (as the room's check returned it) with the ``language``'s job kind
    over ``tables`` and ``models``, each an input by name."""
    from cleanroom.enclave.runtime import KINDS  # noqa: PLC0415 - the enclave's own table

    kind = KINDS.get(language)
    if kind is None:
        raise PolicyError(f"no job kind runs {language!r} analyses")
    with tempfile.TemporaryDirectory(prefix="cleanroom-try-") as tmp:
        work = Path(tmp)
        con = connect()
        try:
            inputs = [
                _sealed(con, work / f"input-{name}", name, table) for name, table in tables.items()
            ]
            for name, (model_bytes, manifest) in (models or {}).items():
                table = model_table(model_bytes, manifest)
                inputs.append(_sealed(con, work / f"input-{name}", name, table, manifest))
        finally:
            con.close()
        run = work / "run"
        run.mkdir(mode=0o700)
        return kind(text, inputs, limits, run)


def _sealed(
    con: Any, path: Path, name: str, table: pa.Table, model: ModelManifest | None = None
) -> Input:
    key = os.urandom(32)
    write_encrypted(con, table.to_reader(), path, key)
    return Input(name, path, key, model, table.num_rows)
