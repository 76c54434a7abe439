"""Names and unique prefixes (client/names.py): one match or a refusal naming
the candidates; never a guess."""

from __future__ import annotations

import pytest

from cleanroom.client import names
from cleanroom.client.names import AmbiguousNameError
from cleanroom.errors import NotFoundError

MEMBERS = [
    {"name": "bank", "fingerprint": "ab12cd34" + "0" * 56},
    {"name": "merchant", "fingerprint": "ab12ef56" + "1" * 56},
    {"name": "ab12", "fingerprint": "ff" * 32},
]
PROPOSALS = [
    {"id": "1" * 64, "status": "open", "type": "add_analysis", "action": {"name": "count"}},
    {
        "id": "2" * 64,
        "status": "open",
        "type": "register_dataset",
        "action": {"manifest": {"payload": {"name": "offers"}}},
    },
]


def test_a_name_wins_over_a_prefix_and_a_unique_prefix_resolves() -> None:
    assert names.member_fingerprint(MEMBERS, "bank") == MEMBERS[0]["fingerprint"]
    assert names.member_fingerprint(MEMBERS, "ab12") == "ff" * 32  # the member named ab12
    assert names.member_fingerprint(MEMBERS, "AB12:CD") == MEMBERS[0]["fingerprint"]
    assert names.member_fingerprint(MEMBERS, "f" * 64) == "ff" * 32


def test_an_ambiguous_prefix_is_refused_naming_the_candidates() -> None:
    with pytest.raises(AmbiguousNameError, match=r"^.ab12. matches 2 members") as caught:
        names.member_fingerprint(MEMBERS[:2], "ab12")
    assert "ab12cd34" in str(caught.value)
    assert "ab12ef56" in str(caught.value)


def test_a_short_prefix_never_matches_by_chance() -> None:
    with pytest.raises(NotFoundError, match="at least 4 characters"):
        names.proposal_id(PROPOSALS, "1")
    assert names.proposal_id(PROPOSALS, "1111") == "1" * 64


def test_nothing_matching_names_what_is_known() -> None:
    with pytest.raises(NotFoundError, match=r"^no member 'bob' \(known: ab12, bank, merchant\)$"):
        names.member_fingerprint(MEMBERS, "bob")
    with pytest.raises(NotFoundError, match="an empty reference"):
        names.job_id([], "  ")


def test_a_pending_proposal_is_named_where_nothing_is_found() -> None:
    with pytest.raises(
        NotFoundError,
        match=r"^no analysis 'count' yet: proposal 1{16} \(add_analysis\) awaits approval$",
    ):
        names.analysis_name([], "count", PROPOSALS)
    with pytest.raises(NotFoundError, match="register_dataset"):
        names.dataset_name([], "offers", PROPOSALS)
    closed = [{**PROPOSALS[0], "status": "rejected"}]
    with pytest.raises(NotFoundError, match=r"^no analysis 'count' \(known: none\)$"):
        names.analysis_name([], "count", closed)


def test_rooms_resolve_by_name_or_id_prefix() -> None:
    rooms = [{"room": "a" * 32, "name": "offers"}, {"room": "b" * 32, "name": "trial"}]
    assert names.room_id(rooms, "trial") == "b" * 32
    assert names.room_id(rooms, "aaaa") == "a" * 32
