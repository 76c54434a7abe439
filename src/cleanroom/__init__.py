"""cleanroom: a confidential clean room.

The short names are the safe paths::

    from cleanroom import Party, Schema, seal_dataset, open_dataset

    bank = Party.create("bank")
    sealed = seal_dataset("cards.csv", schema=Schema.load("cards.schema.json"),
                          owner=bank, output="cards.sealed", name="cards")
    table = open_dataset("cards.sealed", bank)

    room = Client("http://127.0.0.1:8321", bank).room(room_id)   # a hosted room
    room.audit.verify()
"""

from cleanroom.client import Client
from cleanroom.datasets import Column, Schema, decrypt_dataset, open_dataset, seal_dataset
from cleanroom.errors import (
    CleanroomError,
    IntegrityError,
    InvalidInputError,
    OperationalError,
    ValidationError,
)
from cleanroom.identities import Party, PublicIdentity

__version__ = "0.1.0"

__all__ = [
    "CleanroomError",
    "Client",
    "Column",
    "IntegrityError",
    "InvalidInputError",
    "OperationalError",
    "Party",
    "PublicIdentity",
    "Schema",
    "ValidationError",
    "decrypt_dataset",
    "open_dataset",
    "seal_dataset",
]
