"""A ledger writer for the crash-safety test: appends until killed.

Usage: python -m tests.crash_writer DATA_DIR. Prints "ACK <size>" after each
append returns, that is, once the entries are durable.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from cleanroom import Party
from cleanroom.governance import member_accept, new_room_id, propose, room_create, statement_digest
from cleanroom.ledger import TreeHeadPolicy, open_ledger


def main() -> None:
    data = Path(sys.argv[1])
    ledger = open_ledger(data, policy=TreeHeadPolicy(max_entries=7, max_delay_ms=5))
    keys = data / "parties"
    if not (keys / "bank").exists():
        for name in ("bank", "merchant"):
            Party.create(name).save(keys / name)
    bank, merchant = Party.load(keys / "bank"), Party.load(keys / "merchant")
    rooms = ledger.rooms()
    if rooms:
        room = rooms[0]
    else:
        room = new_room_id()
        token = room_create(
            bank,
            room,
            name="crash",
            members=[
                (bank.identity_document(), ["data_provider"]),
                (merchant.identity_document(), ["data_provider"]),
            ],
        )
        ledger.create_room(token)
        ledger.submit(room, [member_accept(merchant, room, statement_digest(token))])
    rng = random.Random()
    while True:
        batch = [
            propose(bank, room, {"type": "set_measurements", "measurements": []})
            for _ in range(rng.randint(1, 5))
        ]
        entries = ledger.submit(room, batch)
        print(f"ACK {entries[-1].seq + 1}", flush=True)


if __name__ == "__main__":
    main()
