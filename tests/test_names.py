"""Names and unique prefixes (client/names.py): one match or a refusal naming
the candidates; never a guess, and never a name that captures another's id."""

from __future__ import annotations

import pytest

from cleanroom.client import names
from cleanroom.client.names import AmbiguousNameError
from cleanroom.errors import NotFoundError

BANK = "ab12cd34" + "0" * 56
MERCHANT = "ab12ef56" + "1" * 56
MEMBERS = [
    {"name": "bank", "fingerprint": BANK},
    {"name": "merchant", "fingerprint": MERCHANT},
    {"name": "ab12", "fingerprint": "ff" * 32},  # a name shaped like the others' prefix
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


def test_exact_names_full_ids_and_unique_prefixes_resolve() -> None:
    assert names.member_fingerprint(MEMBERS, "bank") == BANK
    assert names.member_fingerprint(MEMBERS, "merchant") == MERCHANT
    assert names.member_fingerprint(MEMBERS, "AB12:CD") == BANK
    assert names.member_fingerprint(MEMBERS, "f" * 64) == "ff" * 32


def test_a_hex_shaped_reference_is_an_id_never_a_name() -> None:
    """A member naming itself "ab12" cannot capture references to the members
    whose fingerprints start ab12 (a recipient list, a removal)."""
    with pytest.raises(AmbiguousNameError, match=r"^'ab12' matches 2 members \(ab12cd34"):
        names.member_fingerprint(MEMBERS, "ab12")
    impostor = [{"name": BANK, "fingerprint": "ee" * 32}, {"name": "bank", "fingerprint": BANK}]
    assert names.member_fingerprint(impostor, BANK) == BANK


def test_a_short_prefix_never_matches_by_chance() -> None:
    with pytest.raises(NotFoundError, match="at least 4 characters"):
        names.proposal_id(PROPOSALS, "1")
    assert names.proposal_id(PROPOSALS, "1111") == "1" * 64


def test_nothing_matching_names_what_is_known() -> None:
    with pytest.raises(
        NotFoundError, match=r"^no member 'someone' \(known: ab12, bank, merchant\)$"
    ):
        names.member_fingerprint(MEMBERS, "someone")
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


def test_a_name_two_things_share_is_ambiguous() -> None:
    twins = [{"name": "bank", "fingerprint": "aa" * 32}, {"name": "bank", "fingerprint": "bb" * 32}]
    with pytest.raises(AmbiguousNameError, match=r"^'bank' matches 2 members"):
        names.member_fingerprint(twins, "bank")


def test_a_dataset_or_analysis_name_is_exact_never_a_prefix() -> None:
    datasets = [{"name": "spend"}, {"name": "spend_eu"}]
    assert names.dataset_name(datasets, "spend") == "spend"
    with pytest.raises(NotFoundError, match=r"^no dataset 'spe'"):
        names.dataset_name(datasets, "spe")
    assert names.analysis_name([{"name": "cafe"}], "cafe") == "cafe"  # hex-shaped, still a name
