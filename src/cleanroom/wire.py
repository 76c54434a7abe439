"""Parsing wire and file models at the edge.

Every file format and message is a pydantic model with ``extra="forbid"``;
:func:`parse_model` turns any parse failure into one
:class:`DeserializationError` that names the document and the field, chained
from the cause.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from cleanroom.crypto.encoding import parse_json
from cleanroom.errors import DeserializationError, StorageError

M = TypeVar("M", bound=pydantic.BaseModel)

MAX_DOCUMENT_BYTES = 16 << 20


class WireModel(pydantic.BaseModel):
    # no NaN or infinity in any field, however the document was parsed (an overflowing
    # literal such as 1e400 parses as infinity)
    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )


def _describe(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    others = exc.error_count() - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return f"{where}: {first['msg']}{more}"


def parse_model(model: type[M], data: Any, *, what: str) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise DeserializationError(f"{what} is invalid at {_describe(exc)}") from exc


def read_json_file(path: Path, *, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """Read a JSON file strictly, with a size cap and readable errors."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DeserializationError(f"{what} {path} is too large ({size} bytes)")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{what} {path} is a directory, not a file") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if not data.strip():
        raise DeserializationError(f"{what} {path} is empty")
    return parse_json(data, what=f"{what} {path}")


def pretty_json(document: Any) -> bytes:
    """Indented JSON for files people read; signatures never cover these bytes."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
