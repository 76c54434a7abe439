"""What the checks of analyses written as JSON share (pure): one reading of the
approved text, and failing closed.

A scoring spec and a Python bundle are approved by the digest of their text, so
the text must have exactly one reading: it is accepted only in its RFC 8785
canonical form (sorted keys, no spaces, no duplicate keys, no escapes beyond the
canonical ones), re-serialised and compared byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from cleanroom.crypto.canonical import canonical_json
from cleanroom.errors import CleanroomError, PolicyError
from cleanroom.wire import WireModel, parse_model


class CanonicalText(WireModel):
    """A wire model proposed as the canonical JSON text of itself."""

    def text(self) -> str:
        """The canonical text: what an analysis proposes."""
        return canonical_json(self.model_dump(mode="json", exclude_none=True)).decode("utf-8")


T = TypeVar("T", bound=CanonicalText)


def parse_canonical(model: type[T], text: str, *, what: str) -> T:
    """``text`` as a ``model``; refuses any text but its canonical form."""
    try:
        parsed = parse_model(model, json.loads(text), what=what)
    except (ValueError, CleanroomError) as exc:
        raise PolicyError(f"a {what} is one JSON object: {exc}") from exc
    if parsed.text() != text:
        raise PolicyError(
            f"a {what} must be written in RFC 8785 canonical JSON (sorted keys, no spaces), "
            "so its digest has one reading"
        )
    return parsed


@contextmanager
def fail_closed() -> Iterator[None]:
    """Any failure inside a check is a refusal, naming only the failure's kind."""
    try:
        yield
    except PolicyError:
        raise
    except Exception as exc:
        raise PolicyError(
            f"the analysis could not be checked, so it is refused ({type(exc).__name__})"
        ) from exc
