"""One room floods the job queue: its extra jobs fail at once with a fixed
category, and another room's job runs before the flood's queued jobs (a free
worker takes the room with the fewest running). A real service with one worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.service.local import local_service
from tests.test_jobs import _close_clients, _room

__all__ = ["_close_clients"]  # the fixture stops the key agents


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[str]:
    env = {"CLEANROOM_JOB_PARALLELISM": "1", "CLEANROOM_JOB_QUEUE_PER_ROOM": "2"}
    with local_service(tmp_path / "data", env=env) as url:
        yield url


def test_a_flooding_room_cannot_starve_another(one_worker: str, tmp_path: Path) -> None:
    flood = _room(one_worker, tmp_path / "flood")
    other = _room(one_worker, tmp_path / "other")
    burst = [flood["analyst"].run_job("offers") for _ in range(5)]
    late = other["analyst"].run_job("offers")
    views = {job: flood["analyst"].wait_job(job, timeout=180) for job in burst}
    mine = other["analyst"].wait_job(late, timeout=180)
    busy = [j for j, v in views.items() if v["reason"] == "service busy"]
    ran = [j for j, v in views.items() if v["status"] == "succeeded"]
    assert len(busy) == 2  # one running and two waiting; the rest refused at once
    assert len(ran) == 3
    assert mine["status"] == "succeeded"
    # the other room's job did not wait behind the whole burst
    last = max(views[j]["finished_at"] for j in ran)
    assert mine["finished_at"] < last
