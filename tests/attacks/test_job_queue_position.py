"""Queue position through the API: a member sees where its room's job waits
(``queue_position``: 1 is next, null once it runs or ends); positions count
only that room's queue, so one room learns nothing of another's backlog, and
no stranger sees either. A real service with one worker, whose first job waits
for a key agent that is not running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.client import Room
from cleanroom.errors import AuthorizationError
from cleanroom.service.local import local_service
from tests.test_jobs import _client, _close_clients, _room

__all__ = ["_close_clients"]  # the fixture closes the clients


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[str]:
    env = {"CLEANROOM_JOB_PARALLELISM": "1", "CLEANROOM_JOB_RELEASE_WAIT_S": "30"}
    with local_service(tmp_path / "data", env=env) as url:
        yield url


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the queue never got there"
        time.sleep(0.1)


def test_members_see_their_rooms_queue_and_nothing_else(one_worker: str, tmp_path: Path) -> None:
    busy = _room(one_worker, tmp_path / "busy", agents=False)  # keys are never released
    other = _room(one_worker, tmp_path / "other", agents=False)
    analyst = busy["analyst"]
    jobs = [analyst.run_job("offers") for _ in range(3)]

    def positions() -> list[Any]:
        return [analyst.job(j)["queue_position"] for j in jobs]

    # the first job took the one worker (it waits for keys); the others queue behind it
    eventually(lambda: positions() == [None, 1, 2])
    listed = {j["id"]: j["queue_position"] for j in analyst.jobs()}
    assert [listed[j] for j in jobs] == [None, 1, 2]
    assert busy["bank"].job(jobs[2])["queue_position"] == 2  # every member sees it
    # another room's job: first in its own queue, whatever this room's backlog
    theirs = other["analyst"].run_job("offers")
    eventually(lambda: other["analyst"].job(theirs)["queue_position"] == 1)
    # (1) nobody outside the room sees its queue, or its jobs at all
    for stranger in (other["analyst"], _outsider(one_worker, tmp_path)):
        with pytest.raises(AuthorizationError, match="not a member"):
            stranger.client._call("GET", f"/v1/rooms/{analyst.id}/jobs/{jobs[1]}")
        with pytest.raises(AuthorizationError, match="not a member"):
            stranger.client._call("GET", f"/v1/rooms/{analyst.id}/jobs")
    # (2) the command line shows it
    keystore = analyst.client.party.save(tmp_path / "keys" / "analyst")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("CLEANROOM_SERVICE_KEY", None)
    shown = subprocess.run(
        [
            *(sys.executable, "-m", "cleanroom", "job", "status", jobs[2][:16]),
            *("--room", analyst.id, "--service", one_worker, "--as", str(keystore)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "queued: position 2" in " ".join(shown.stdout.split())


def _outsider(url: str, tmp: Path) -> Room:
    client = _client(url, Party.create("outsider"), tmp)  # closed by the fixture
    return client.create_room("own", [(client.party.identity_document(), ["analyst"])])
