"""Python analyses: the kind in the real confined child (the escapes a malicious
bundle would try, each refused or bounded), and one job end to end through a real
service and real enclave processes. The pure check is in tests/test_python_rules.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from examples.clinical_data import PATIENTS_RULE, PATIENTS_SCHEMA, patients

from cleanroom import Party
from cleanroom.enclave.sandbox import probe_confinement
from cleanroom.errors import CleanroomError
from cleanroom.service.local import local_service
from tests.test_jobs import (  # the jobs suite's clients and key agents
    _approve_if_needed,
    _client,
    _close_clients,  # noqa: F401 - an autouse fixture
    start_agent,
)
from tests.test_python_rules import COUNT_BY_AGE, OUTPUT, PATIENTS, _bundle

# -- the kind, in the real confined child ------------------------------------------------

confined = pytest.mark.skipif(
    not probe_confinement().enforced and os.environ.get("CLEANROOM_REQUIRE_SANDBOX") != "1",
    reason="this machine cannot confine a job (no Landlock or no seccomp)",
)


def _inputs(tmp: Path, rows: int = 200) -> list[Any]:
    from cleanroom.datasets.seal import seal_dataset, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.sql import Input  # noqa: PLC0415

    owner = Party.create("hospital")
    sealed = seal_dataset(patients(rows), schema=PATIENTS, owner=owner, output=tmp / "p", name="p")
    key = unseal_key(tmp / "p", sealed.manifest, owner)
    return [Input("patients", tmp / "p" / "data.parquet", key, rows=rows)]


def _run(tmp: Path, code: str, *, output: list[dict[str, str]] = OUTPUT, **limits: Any) -> Any:
    from cleanroom.enclave.python import run_python  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits  # noqa: PLC0415

    work = tmp / "work"
    work.mkdir()
    bundle = _bundle(code, output=output)
    return run_python(bundle.text(), _inputs(tmp), Limits(**{"time_s": 30.0, **limits}), work)


@confined
def test_an_approved_bundle_runs_confined_and_its_output_is_validated(tmp_path: Path) -> None:
    result = _run(tmp_path, COUNT_BY_AGE)
    table = patients(200)
    expected = table.group_by("age_band").aggregate([("patient_id", "count")])
    expected = dict(zip(*(expected.column(i).to_pylist() for i in range(2)), strict=True))
    assert result.table.schema == pa.schema([("age_band", pa.int32()), ("patients", pa.int64())])
    assert dict(zip(*result.table.to_pydict().values(), strict=True)) == expected
    assert set(result.phases) == {"prepare_ms", "sandbox_ms", "validate_ms"}
    held = result.confinement
    assert held["seccomp"] is True
    assert held["landlock_abi"] >= 1
    assert held["no_new_privs"] is True


WRITE = "\nimport pyarrow as pa, pyarrow.parquet as pq, sys\nout = sys.argv[2]\n"


@confined
@pytest.mark.parametrize(
    ("code", "category", "what"),
    [
        # the output is not what the owners approved
        (
            WRITE + "pq.write_table(pa.table({'age_band': [1]}), out + '/result.parquet')\n",
            "query refused",
            "a column missing",
        ),
        (
            WRITE + "pq.write_table(pa.table({'patients': [1], 'age_band': [1]}), out + "
            "'/result.parquet')\n",
            "query refused",
            "columns out of order",
        ),
        (
            WRITE + "pq.write_table(pa.table({'age_band': ['x'], 'patients': [1]}), out + "
            "'/result.parquet')\n",
            "query refused",
            "a string where an integer was declared",
        ),
        (
            WRITE + "pq.write_table(pa.table({'age_band': [2**40], 'patients': [1]}), out + "
            "'/result.parquet')\n",
            "query refused",
            "an integer that does not fit int32",
        ),
        (
            WRITE + "t = pa.table({'age_band': [1], 'patients': [1]})\n"
            "pq.write_table(t, out + '/result.parquet')\n"
            "open(out + '/extra.bin', 'wb').write(b'x')\n",
            "query refused",
            "a second file beside the result",
        ),
        (
            WRITE + "open(out + '/result.parquet', 'w').write('not parquet')\n",
            "query refused",
            "a result that is not Parquet",
        ),
        (WRITE + "pass\n", "query refused", "no result at all"),
        (
            WRITE + "t = pa.table({'age_band': list(range(50)), 'patients': [1] * 50})\n"
            "pq.write_table(t, out + '/result.parquet')\n",
            "result too large",
            "over the row limit",
        ),
        # the code tries to leave the sandbox: each attempt ends the job, its text withheld
        (
            "import socket\nsocket.create_connection(('127.0.0.1', 5432))\n",
            "internal error",
            "TCP to PostgreSQL on loopback",
        ),
        (
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            "s.connect('/var/run/postgresql/.s.PGSQL.5432')\n",
            "internal error",
            "PostgreSQL's unix socket",
        ),
        ("import socket\nsocket.getaddrinfo('example.com', 443)\n", "internal error", "DNS"),
        (
            "import os, sys\nopen(sys.argv[2] + '/result.parquet', 'wb').write("
            "open('/proc/%d/environ' % os.getppid(), 'rb').read())\n",
            "internal error",
            "the parent's environment",
        ),
        (
            "import sys\nopen(sys.argv[2] + '/leak.txt', 'w').write(open('/etc/passwd').read())\n",
            "internal error",
            "a file outside its inputs",
        ),
        ("import os\nos.fork()\n", "internal error", "a new process"),
        (
            "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\n",
            "internal error",
            "signalling the enclave runtime",
        ),
        (
            "open('/tmp/planted.py', 'w').write('x')\n",
            "internal error",
            "writing outside its output",
        ),
        ("while True:\n    pass\n", "time limit", "spinning past the time limit"),
        (
            "raise ValueError('patient P0000042 has hba1c 13.7')\n",
            "internal error",
            "an exception quoting a record",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v and "\n" not in v else None,
)
def test_a_bundle_that_misbehaves_fails_with_a_fixed_category(
    tmp_path: Path, code: str, category: str, what: str
) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415
    from cleanroom.enclave.sql import QueryError  # noqa: PLC0415

    limits: dict[str, Any] = {"max_result_rows": 10}
    if "while True" in code:
        limits["time_s"] = 2.0
    with pytest.raises(QueryError) as caught:
        _run(tmp_path, code, **limits)
    assert category_of(caught.value) == category, what
    assert "P0000042" not in str(caught.value)
    assert "13.7" not in str(caught.value)
    assert not Path("/tmp/planted.py").exists()


# -- one job end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_service(tmp_path_factory.mktemp("python-jobs") / "data") as url:
        yield url


@confined
def test_a_python_job_runs_end_to_end_and_records_its_confinement(
    service: str, tmp_path: Path
) -> None:
    from cleanroom.attestation import measure  # noqa: PLC0415

    hospital = Party.create("hospital")
    client = _client(service, hospital, tmp_path)
    created = client.create_room(
        "study", [(hospital.identity_document(), ["data_provider", "result_recipient", "analyst"])]
    )
    room = client.room(created.id)
    contract = room.propose(
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": measure()}],
            "allow_insecure_virtual": True,
        }
    )
    _approve_if_needed(room, contract)
    published = room.publish_dataset(
        patients(300),
        schema=PATIENTS_SCHEMA,
        name="patients",
        rule=PATIENTS_RULE,
        release_to=["insecure-virtual"],
    )
    _approve_if_needed(room, published)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "main.py").write_text(COUNT_BY_AGE)
    # before proposing: the same bundle, in the same confined child, on mock rows
    tried = room.try_analysis("python", _bundle().text(), ["patients"], rows=250)
    assert tried.column_names == ["age_band", "patients"]
    assert sum(tried.column("patients").to_pylist()) == 250
    escape = _bundle(
        COUNT_BY_AGE.replace("inputs, output =", "open('/etc/passwd'); inputs, output =")
    )
    with pytest.raises(CleanroomError, match="the job failed"):
        room.try_analysis("python", escape.text(), ["patients"])
    pid = room.propose_python(
        "by-age",
        tmp_path / "bundle",
        entry="main.py",
        output=[("age_band", "int32"), ("patients", "int64")],
        inputs=["patients"],
        recipients=["hospital"],
    )
    _approve_if_needed(room, pid)
    start_agent(service, hospital, created.id, tmp_path)
    job = room.run_job("by-age")
    view = room.wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    held = view["output"]["confinement"]
    assert held["seccomp"] is True
    assert held["landlock_abi"] >= 1
    assert not {"sandbox_ms", "prepare_ms"} & set(view["output"]["phases"])  # withheld
    result = room.job_result(job)
    assert sum(result.column("patients").to_pylist()) == 300


@confined
def test_an_output_that_expands_past_the_byte_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415
    from cleanroom.enclave.sql import QueryError  # noqa: PLC0415

    bomb = (
        "import sys\nimport pyarrow as pa, pyarrow.parquet as pq\n"
        "n = 200_000\n"
        "t = pa.table({'age_band': pa.array([1] * n, pa.int32()), 'patients': [7] * n})\n"
        "pq.write_table(t, sys.argv[2] + '/result.parquet', compression='zstd')\n"
    )
    with pytest.raises(QueryError) as caught:
        _run(tmp_path, bomb, max_result_bytes=200_000, max_result_rows=1_000_000)
    assert category_of(caught.value) == "result too large"
    assert (tmp_path / "work" / "output" / "result.parquet").stat().st_size < 200_000
