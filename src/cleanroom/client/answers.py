"""The service's answers, parsed at the edge of the SDK.

Everything the SDK reads from a service answer goes through a model here, so a
malformed or hostile answer (wrong types, missing fields, truncated lists) is
one :class:`DeserializationError` naming the answer and the field, never a
``KeyError`` or ``TypeError`` deep in the SDK. What the answers carry that the
ledger signs (receipts, tree heads, exports) is verified afterwards by the
ledger's own checks, which raise :class:`IntegrityError`.

Two kinds of answer:

* protocol envelopes (a tree head, a consistency proof, a submission's
  receipts) are parsed whole, with ``extra="forbid"`` like every wire model;
* views of a room's state (the room list, the room summary, proposals, jobs,
  the broker's offer) grow with the service and are handed back to callers as
  sent: :func:`parse_view` checks the fields the SDK reads and ignores the rest
  (the models themselves still forbid extra fields, they only see the fields
  they declare).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import Field, StrictInt, StrictStr

from cleanroom.errors import DeserializationError
from cleanroom.wire import WireModel, parse_model

M = TypeVar("M", bound=WireModel)

Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
MAX_PROOF = 128  # hashes in a consistency proof: twice the depth of any tree we can hold


def parse_answer(model: type[M], data: Any, *, what: str) -> M:
    """A protocol envelope, parsed whole (no field missing, none unknown)."""
    return parse_model(model, data, what=what)


def parse_view(model: type[M], data: Any, *, what: str) -> M:
    """A view: the fields ``model`` declares are checked, the others ignored."""
    if not isinstance(data, dict):
        raise DeserializationError(f"{what} is invalid at document: not a JSON object")
    known = {k: v for k, v in data.items() if k in model.model_fields}
    return parse_model(model, known, what=what)


def parse_list(data: Any, *, what: str) -> list[Any]:
    """A JSON array (of views each parsed with :func:`parse_view`)."""
    if not isinstance(data, list):
        raise DeserializationError(f"{what} is invalid at document: not a JSON array")
    return data


# -- envelopes -----------------------------------------------------------------------


class RoomCreated(WireModel):
    room: StrictStr
    seq: StrictInt = Field(ge=0)
    status: StrictStr


class Consistency(WireModel):
    """A consistency proof between two tree sizes (sent along a submission, or
    taken from a removed member's prefix export)."""

    old: StrictInt = Field(ge=0)
    new: StrictInt = Field(ge=0)
    proof: list[Hash] = Field(max_length=MAX_PROOF)


class Submitted(WireModel):
    entries: list[dict[str, Any]] = Field(min_length=1)
    receipts: list[dict[str, Any]] = Field(min_length=1)
    consistency: Consistency | None = None


class Proof(WireModel):
    proof: list[Hash] = Field(max_length=MAX_PROOF)


class TreeHeadAnswer(WireModel):
    tree_head: StrictStr


class Entries(WireModel):
    entries: list[dict[str, Any]]


# -- views (parse_view) ------------------------------------------------------------------


class RoomListed(WireModel):
    room: StrictStr
    name: StrictStr
    status: StrictStr
    contract_version: StrictInt
    you: StrictStr


class RoomSummary(WireModel):
    members: list[dict[str, Any]]
    datasets: list[dict[str, Any]]


class DatasetSummary(WireModel):
    name: StrictStr
    budget: dict[str, float] | None


class ProposalView(WireModel):
    id: StrictStr
    status: StrictStr
    action: dict[str, Any]


class JobView(WireModel):
    id: StrictStr
    status: StrictStr
    waiting_for: list[StrictStr] | None = None


class BrokerOffer(WireModel):
    nonce: StrictStr
    identity: dict[str, Any]
