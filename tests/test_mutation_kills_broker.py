"""The key desk, the attested broker and its release memory, one check at a time
(mutation kills, docs/testing.md).

The room of tests/test_mutation_kills_state.py on a real ledger: the bank's key
deposited with the attested broker, the merchant's kept at home, a job reading
both and one reading the merchant's alone. Enclaves attest with the virtual
platform at an injected clock; the desk and the broker run in process.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.broker.attested import AttestedBroker
from cleanroom.broker.desk import MAX_OPEN_NONCES, NONCE_TTL_MS, KeyDesk
from cleanroom.broker.memory import ReleaseMemory, WithheldError
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    GovernanceError,
    IntegrityError,
    OperationalError,
)
from cleanroom.governance import parse_statement, sign_statement
from cleanroom.governance.state import RoomState
from tests.rooms import Attempt
from tests.test_mutation_kills_state import World


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


class Link:
    """The broker as the desk reaches it (cleanroom.broker.link.Broker), counting
    the exchanges; it can fail the next one, or answer with a given statement."""

    def __init__(self, broker: AttestedBroker) -> None:
        self.broker = broker
        self.calls = 0
        self.fail = False
        self.statement: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.broker.fingerprint

    def answer(self, export: dict[str, Any], request: dict[str, Any]) -> str | None:
        self.calls += 1
        if self.fail:
            raise OperationalError("the broker is not answering")
        if self.statement is not None:
            return self.statement
        return self.broker.answer(export, request)


def _desk(world: World, broker: Any = "real") -> KeyDesk:
    link = world.fx.broker if broker == "real" else broker
    return KeyDesk(world.fx.ledger, broker=link, clock=world.clock)


def _status(world: World, job: str) -> str:
    return world.fx.ledger.state(world.room).jobs[job].status


# -- launch tokens and challenges ----------------------------------------------------


def test_a_launch_token_is_for_its_job_only(world: World) -> None:
    desk = _desk(world)
    token = desk.launch(world.room, world.job)
    desk.check_launch(world.room, world.job, token)
    for room, job, given in (
        (world.room, world.job, token + "x"),
        (world.room, world.solo, token),
        ("0" * 32, world.job, token),
    ):
        with pytest.raises(AuthenticationError, match="no enclave was launched for this job"):
            desk.check_launch(room, job, given)
    with pytest.raises(AuthenticationError, match="no enclave was launched"):
        desk.challenge(world.room, world.job, "nope")


def test_the_desk_keeps_the_ledgers_clock_by_default(world: World) -> None:
    desk = KeyDesk(world.fx.ledger, broker=world.fx.broker)
    assert desk.clock is world.fx.ledger.clock
    attempt = Attempt(desk, world.room, world.job, world.clock)
    assert (
        desk.release(
            world.room,
            world.job,
            token=attempt.token,
            nonce=attempt.nonce,
            enclave=attempt.enclave.identity_document(),
            evidence=attempt.evidence(),
        )["status"]
        == "requested"
    )


def test_open_challenges_are_limited_per_job_and_expire(world: World) -> None:
    desk = _desk(world)
    token = desk.launch(world.room, world.job)
    first = [desk.challenge(world.room, world.job, token) for _ in range(MAX_OPEN_NONCES)]
    with pytest.raises(AuthorizationError, match="too many open challenges for this job"):
        desk.challenge(world.room, world.job, token)
    other = desk.launch(world.room, world.solo)  # another job's count is its own
    desk.challenge(world.room, world.solo, other)
    world.clock.advance(NONCE_TTL_MS - 1)
    with pytest.raises(AuthorizationError, match="too many open challenges"):
        desk.challenge(world.room, world.job, token)
    world.clock.advance(1)  # expired at exactly the TTL: purged
    desk.challenge(world.room, world.job, token)
    assert len(first) == MAX_OPEN_NONCES


def test_a_fresh_challenge_survives_the_next_one(world: World) -> None:
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.solo, world.clock)
    desk.challenge(world.room, world.solo, attempt.token)  # purges only expired nonces
    assert attempt.release()["waiting_for"] == ["merchant"]


def test_forget_drops_only_that_jobs_nonces(world: World) -> None:
    desk = _desk(world)
    kept = Attempt(desk, world.room, world.solo, world.clock)
    dropped = Attempt(desk, world.room, world.job, world.clock)
    desk.forget(world.room, world.job)
    with pytest.raises(AuthenticationError, match="no enclave was launched"):
        dropped.release()
    again = desk.launch(world.room, world.job)
    with pytest.raises(AuthorizationError, match="not issued for this job"):
        dropped.release(token=again)
    assert kept.release()["status"] == "requested"


# -- the request -----------------------------------------------------------------------


def test_a_nonce_is_for_one_job_once_and_expires(world: World) -> None:
    desk = _desk(world)
    solo = Attempt(desk, world.room, world.solo, world.clock)
    job = Attempt(desk, world.room, world.job, world.clock)
    with pytest.raises(AuthorizationError, match="key release denied: the nonce was not issued"):
        job.release(job.evidence(nonce=solo.nonce), nonce=solo.nonce)
    assert _status(world, world.job) == "failed"  # denied on the ledger, signed by the service
    with pytest.raises(AuthorizationError, match="not issued for this job, or already used"):
        desk.release(
            world.room,
            world.solo,
            token=solo.token,
            nonce=solo.nonce,
            enclave=solo.enclave.identity_document(),
            evidence=solo.evidence(),
        )


def test_a_nonce_expires_at_its_ttl(world: World) -> None:
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.solo, world.clock)
    world.clock.advance(NONCE_TTL_MS)
    with pytest.raises(AuthorizationError, match="the nonce expired"):
        attempt.release()
    assert _status(world, world.solo) == "failed"


def test_a_nonce_just_before_its_ttl_is_good(world: World) -> None:
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.solo, world.clock)
    world.clock.advance(NONCE_TTL_MS - 1)
    assert attempt.release()["status"] == "requested"


def test_a_refused_request_is_denied_and_raises(world: World) -> None:
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    with pytest.raises(AuthorizationError, match=r"key release denied: .*report data"):
        attempt.release(attempt.evidence(nonce="x" * 43))
    assert _status(world, world.job) == "failed"


def test_the_broker_releases_and_the_job_waits_for_the_owner(world: World) -> None:
    link = Link(world.fx.broker)
    desk = _desk(world, link)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    assert attempt.release() == {"status": "requested", "waiting_for": ["merchant"], "stale": []}
    assert link.calls == 1
    assert [r["job"] for r in desk.requests(world.room)] == [world.job]
    desk.poll(world.room, world.job)  # nothing new for the broker: not asked again
    desk.poll(world.room, world.solo)  # no request for this job: nothing
    assert link.calls == 1
    world.fx.submit(world.token("merchant", "key.deny", {"job": world.job, "reason": "no"}))
    assert desk.requests(world.room) == []  # the job no longer waits
    desk.poll(world.room, world.job)
    assert link.calls == 1
    assert desk.status(world.room, world.job)["stale"] == []


def test_a_broker_that_fails_is_asked_again_only_later(world: World) -> None:
    link = Link(world.fx.broker)
    link.fail = True
    desk = _desk(world, link)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    assert attempt.release()["status"] == "requested"
    link.fail = False
    desk.poll(world.room, world.job)  # within RETRY_S of the failure: not asked
    assert link.calls == 1
    desk._failed[(world.room, world.job)] -= 2.0  # as if the retry delay had passed
    desk.poll(world.room, world.job)
    assert link.calls == 2
    state = world.fx.ledger.state(world.room)
    assert len(state.jobs[world.job].released) == 1


def test_a_statement_the_ledger_refuses_denies_the_job(world: World) -> None:
    link = Link(world.fx.broker)
    broker = world.fx.broker._party
    state = world.fx.ledger.state(world.room)
    body = world.release(state, ["customers"])  # the merchant's input, not the broker's
    link.statement = sign_statement(broker, world.room, "key.release", body, now=world.clock)
    desk = _desk(world, link)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    with pytest.raises(AuthorizationError, match="key release denied: the release names other"):
        attempt.release()
    assert _status(world, world.job) == "failed"


def test_a_brokers_denial_ends_the_job_with_its_reason(world: World) -> None:
    manifest = world.manifests["transactions"]
    world.fx.deposit("bank", "transactions", manifest, b"w" * 32, ["insecure-virtual"])
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    with pytest.raises(AuthorizationError, match=r"^key release denied: the key deposited for"):
        attempt.release()
    assert _status(world, world.job) == "failed"


def test_a_denial_without_a_reason_says_denied(world: World) -> None:
    link = Link(world.fx.broker)
    desk = _desk(world, link)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    link.fail = True
    attempt.release()
    link.fail = False
    # the broker's denial is recorded while the job's reason is empty (a stand-in for
    # a ledger that records none): the desk still raises, with the generic reason
    link.statement = sign_statement(
        world.fx.broker._party,
        world.room,
        "key.deny",
        {"job": world.job, "reason": "x"},
        now=world.clock,
    )
    desk._failed.clear()
    real = world.fx.ledger.state

    def state(room: str) -> RoomState:
        found = real(room)
        if found.jobs[world.job].status == "failed":
            found = copy.deepcopy(found, {id(found.memo): None})
            found.jobs[world.job].reason = ""
        return found

    world.fx.ledger.state = state  # type: ignore[method-assign]
    with pytest.raises(AuthorizationError, match=r"^key release denied$"):
        desk.poll(world.room, world.job)


def test_without_a_broker_a_deposited_key_is_denied(world: World) -> None:
    desk = _desk(world, None)
    solo = Attempt(desk, world.room, world.solo, world.clock)
    assert solo.release()["waiting_for"] == ["merchant"]  # the owner's key: it waits
    attempt = Attempt(desk, world.room, world.job, world.clock)
    with pytest.raises(AuthorizationError, match="this service runs no key broker"):
        attempt.release()
    assert _status(world, world.job) == "failed"
    assert _status(world, world.solo) == "requested"


def test_deposits_with_another_broker_are_stale(world: World) -> None:
    desk = _desk(world, None)
    state = world.fx.ledger.state(world.room)
    job = state.jobs[world.job]
    assert desk.stale(state, job) == ["transactions"]
    assert desk.stale(state, state.jobs[world.solo]) == []
    assert _desk(world).stale(state, job) == []
    other = AttestedBroker(world.fx.broker.attester, world.fx.ledger.service.identity)
    assert _desk(world, other).stale(state, job) == ["transactions"]
    released = copy.deepcopy(state, {id(state.memo): None})
    released.jobs[world.job].released = tuple(released.job_inputs(world.job)[:1])
    assert desk.stale(released, released.jobs[world.job]) == []
    world.fx.submit(world.token("merchant", "key.deny", {"job": world.job, "reason": "no"}))
    state = world.fx.ledger.state(world.room)
    assert desk.stale(state, state.jobs[world.job]) == []


# -- the attested broker ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nonce", "ok"),
    [("n" * 15, False), ("n" * 16, True), ("n" * 128, True), ("n" * 129, False), (7, False)],
)
def test_a_brokers_offer_takes_a_nonce_of_16_to_128_characters(
    world: World, nonce: Any, ok: bool
) -> None:
    if ok:
        assert world.fx.broker.offer(nonce)["nonce"] == nonce
        return
    with pytest.raises(DeserializationError, match="a nonce is 16 to 128 characters"):
        world.fx.broker.offer(nonce)


def _request(world: World, job: str) -> dict[str, Any]:
    attempt = Attempt(_desk(world), world.room, job, world.clock)
    return {
        "job": job,
        "enclave": attempt.enclave.identity_document(),
        "nonce": attempt.nonce,
        "evidence": attempt.evidence(),
    }


def test_the_broker_answers_only_jobs_that_need_its_keys(world: World) -> None:
    broker, export = world.fx.broker, world.fx.ledger.export(world.room)
    assert broker.answer(export, {**_request(world, world.job), "job": "0" * 64}) is None
    assert broker.answer(export, _request(world, world.solo)) is None
    first = _request(world, world.job)
    release = broker.answer(export, first)
    assert release is not None
    assert parse_statement(release).kind == "key.release"
    assert broker.answer(export, first) == release  # sent again, never a new one
    world.fx.submit(release)
    assert broker.answer(world.fx.ledger.export(world.room), first) is None  # nothing due


def test_a_withheld_release_refuses_the_room(world: World) -> None:
    broker = world.fx.broker
    first = _request(world, world.job)
    assert broker.answer(world.fx.ledger.export(world.room), first) is not None
    world.fx.submit(world.token("merchant", "key.deny", {"job": world.job, "reason": "no"}))
    later = _request(world, world.request("count"))
    with pytest.raises(WithheldError, match="never reached the ledger"):
        broker.answer(world.fx.ledger.export(world.room), later)


# -- the release memory, straight on room states ---------------------------------------------


def _state(world: World, **jobs: str) -> RoomState:
    state = copy.deepcopy(world.fx.ledger.state(world.room))
    for job, status in jobs.items():
        state.jobs[getattr(world, job)].status = status
    return state


def test_memory_answers_afresh_when_every_release_is_recorded(world: World) -> None:
    memory = ReleaseMemory()
    state = _state(world)
    assert memory.check(state, world.job, "e", "n") is None
    memory.remember(world.room, world.job, "e", "n", "a.b.c")
    assert memory.check(state, world.job, "e", "n") == "a.b.c"  # not on the ledger: again
    with pytest.raises(GovernanceError, match="released to another enclave"):
        memory.check(state, world.job, "f", "n")
    with pytest.raises(GovernanceError, match="released to another enclave"):
        memory.check(state, world.job, "e", "m")
    with pytest.raises(GovernanceError, match="an earlier release is not on the ledger yet"):
        memory.check(state, world.solo, "e", "n")
    with pytest.raises(GovernanceError, match="released to another enclave"):
        memory.remember(world.room, world.job, "f", "n", "d.e.f")
    from cleanroom.governance.statements import statement_digest  # noqa: PLC0415

    state.seen.add(statement_digest("a.b.c"))  # recorded: answered afresh
    assert memory.check(state, world.solo, "x", "y") is None
    done = _state(world, job="failed")
    done.seen.add(statement_digest("a.b.c"))
    assert memory.check(done, world.solo, "x", "y") is None


@pytest.mark.parametrize("status", ["failed", "running", "succeeded"])
def test_memory_refuses_the_room_once_a_release_is_withheld(world: World, status: str) -> None:
    memory = ReleaseMemory()
    memory.remember(world.room, world.job, "e", "n", "a.b.c")
    with pytest.raises(WithheldError, match="never reached the ledger"):
        memory.check(_state(world, job=status), world.solo, "x", "y")
    with pytest.raises(WithheldError, match="withheld: refused"):
        memory.check(_state(world), world.job, "e", "n")


def test_memory_of_a_job_the_ledger_does_not_know_is_withheld(world: World) -> None:
    memory = ReleaseMemory()
    memory.remember(world.room, "0" * 64, "e", "n", "a.b.c")
    with pytest.raises(WithheldError, match="never reached the ledger"):
        memory.check(_state(world), world.job, "e", "n")


def test_memory_in_a_file_outlives_the_process(world: World, tmp_path: Path) -> None:
    path = tmp_path / "released.json"
    memory = ReleaseMemory(path)
    assert not path.exists()
    memory.remember(world.room, world.job, "e", "n", "a.b.c")
    again = ReleaseMemory(path)
    assert again.check(_state(world), world.job, "e", "n") == "a.b.c"
    with pytest.raises(WithheldError):
        again.check(_state(world, job="failed"), world.job, "e", "n")
    third = ReleaseMemory(path)  # the refusal was saved too
    with pytest.raises(WithheldError, match="withheld: refused"):
        third.check(_state(world), world.job, "e", "n")
    assert json.loads(path.read_text())["refused"] == [world.room]


@pytest.mark.parametrize("document", ['{"rooms": {}}', '{"refused": [], "rooms": []}', "[]"])
def test_a_corrupt_memory_file_is_refused(tmp_path: Path, document: str) -> None:
    path = tmp_path / "released.json"
    path.write_text(document)
    with pytest.raises(IntegrityError, match="is not a record of released keys"):
        ReleaseMemory(path)


def test_errors_are_the_projects(world: World) -> None:
    assert issubclass(WithheldError, IntegrityError)
    assert issubclass(IntegrityError, CleanroomError)
    assert world.fx.broker.fingerprint != Party.create("x").fingerprint


def test_a_poll_for_a_job_that_no_longer_waits_does_nothing(world: World) -> None:
    desk = _desk(world)
    attempt = Attempt(desk, world.room, world.job, world.clock)
    attempt.release()  # the broker's part; the job waits for the merchant
    world.fx.submit(world.token("merchant", "key.deny", {"job": world.job, "reason": "no"}))
    desk.broker = None  # even a desk without a broker asks nothing for a job that ended
    desk.poll(world.room, world.job)
    assert _status(world, world.job) == "failed"
