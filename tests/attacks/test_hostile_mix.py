"""Honest members keep working while an attacker sends everything at once: the
hostile mix of ``benchmarks/_hostile.py`` against a real ``cleanroom serve``.

Three rooms of two members each propose, approve and read (signed requests
through the SDK, receipts verified), timing every operation, for three phases
of :data:`PHASE_S` each: alone; beside the edge attacks (oversized and slow
bodies, slow request heads, room creation past the rate limit); beside every
attack (plus proposals of the longest OR chain the policy check parses, in
the attacker's own room). The attacker is its own process.

What must hold: no honest operation fails; every attack gets the refusal it
should (413, 401, 408, 409, 429, or a closed connection) and no slow
connection outlives its timeout; the service's resident memory grows by less
than :data:`RSS_GROWTH_MIB`; and the honest p99 beside the attacker stays
under twice the quiet p99 of the same run plus :data:`NOISE_S`. The 50 ms is
for noise on a 2-core machine, where the service, the honest clients and the
attacker share the cores, and a p99 over a few hundred operations moves by
tens of milliseconds between identical runs.

Beside the expensive proposals the bound is looser (:data:`CHECK_FACTOR`
times the quiet p99 plus :data:`NOISE_S`): each check the service admits (a
few per party, then 429) parses up to 16 KiB of SQL, and on 2 cores that CPU
is taken from the honest clients and the service alike. What this test pins
is that nothing stalls: checks run outside any service-wide lock and off the
event loop, so timers fire on time and other rooms keep moving. The 2x target
beside every attack is measured by ``benchmarks/service.py --hostile`` and
recorded in docs/benchmarks.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._hostile import (
    ALL,
    EDGE,
    HOLD_BOUND_S,
    ROOMS_PER_HOUR,
    SERVICE_ENV,
    Attacker,
    HonestRun,
    RssPeak,
    honest_rooms,
    rss_mib,
    run_honest,
    service_pid,
    unexpected,
)

from cleanroom.service.local import local_service

PHASE_S = 5.0
NOISE_S = 0.050
RSS_GROWTH_MIB = 64


CHECK_FACTOR = 4


class StallError(AssertionError):
    """Beside expensive proposals the service stalled: the honest p99, or a
    slow connection's timeout, broke its bound."""


def _latency_bound_broken(
    quiet: HonestRun, hostile: HonestRun, phase: str, factor: float = 2
) -> str | None:
    bound = factor * quiet.p99 + NOISE_S
    if hostile.p99 <= bound:
        return None
    return (
        f"beside the {phase}, honest p99 {1000 * hostile.p99:.0f} ms > {1000 * bound:.0f} ms "
        f"({factor:g} x quiet p99 {1000 * quiet.p99:.0f} ms + 50 ms); quiet: {quiet.line()}; "
        f"{phase}: {hostile.line()}"
    )


def _held_too_long(report: dict[str, Any]) -> list[str]:
    return [
        f"a {kind} connection stayed open {seconds:.2f} s (bound {HOLD_BOUND_S[kind]:.1f} s)"
        for kind, seconds in report["held_s"].items()
        if seconds > HOLD_BOUND_S[kind]
    ]


def test_honest_members_keep_working_beside_an_attacker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with local_service(data, env=SERVICE_ENV) as url:
        pairs = honest_rooms(url)
        try:
            with Attacker(url, pairs[0][0].id) as attacker:
                run_honest(pairs, 1.0)  # warm-up
                pid = service_pid(data)
                quiet = run_honest(pairs, PHASE_S)
                before = rss_mib(pid)
                with RssPeak(pid) as memory:
                    attacker.start(EDGE)
                    edge = run_honest(pairs, PHASE_S)
                    edge_report = attacker.stop()
                    attacker.start(ALL)
                    everything = run_honest(pairs, PHASE_S)
                    everything_report = attacker.stop()
        finally:
            for pair in pairs:
                for room in pair:
                    room.client.close()
    # (1) no honest operation failed
    for run in (quiet, edge, everything):
        assert run.errors == [], run.errors[:3]
    # (2) every attack was refused as it should be
    assert unexpected(edge_report, EDGE) == {}, edge_report
    assert unexpected(everything_report, ALL) == {}, everything_report
    for report in (edge_report, everything_report):
        spam = report["outcomes"]["room-spam"]
        assert spam.get("201", 0) <= ROOMS_PER_HOUR - 1  # its own room was the first
    assert edge_report["outcomes"]["room-spam"].get("429", 0) > 0
    # (3) the attacker's bytes were not buffered
    assert memory.peak - before < RSS_GROWTH_MIB, (before, memory.peak)
    # (4) beside the edge attacks, no slow connection outlived its bound and honest
    # latency stayed within its own
    assert _held_too_long(edge_report) == [], edge_report
    broken = _latency_bound_broken(quiet, edge, "edge attacks")
    assert broken is None, broken
    # (5) beside everything: no timer fires late, and honest latency stays within
    # the looser bound (the admitted checks take CPU: module docstring)
    stalled = _held_too_long(everything_report)
    late = _latency_bound_broken(quiet, everything, "whole mix", CHECK_FACTOR)
    if late is not None:
        stalled.append(late)
    if stalled:
        raise StallError("; ".join(stalled))
