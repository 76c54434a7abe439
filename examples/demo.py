"""`make demo`: what cleanroom can do today, run through its real command line.

Two organisations, a bank and a merchant, each create their identity and
encrypt a dataset on their own machine. The demo shows that the ciphertext is
unreadable without the key (to the operator, to plain DuckDB, to the other
party), that tampering is caught, and that each owner can decrypt its own data
exactly. Then the two form a room: membership, dataset registration, an
analysis and a consent revocation become signed statements on a ledger, which
anyone verifies offline, and an edited ledger is caught.

Everything is written under ./demo-output, recreated on every run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
from rich.console import Console
from rich.panel import Panel

from cleanroom import Party
from cleanroom.governance import (
    member_accept,
    new_room_id,
    propose,
    revoke_consent,
    room_create,
    statement_digest,
    vote,
)
from cleanroom.ledger import Ledger, open_ledger

OUT = Path("demo-output")
SEED = 7
console = Console()


def step(title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{title}")


def cleanroom(*args: str, expect_failure: bool = False) -> str:
    console.print(f"[dim]$[/] [bold]cleanroom {shlex.join(args)}[/]")
    result = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=OUT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": str(console.width)},
    )
    output = (result.stdout + result.stderr).rstrip()
    if output:
        console.print(output, highlight=False, markup=False)
    if (result.returncode != 0) != expect_failure:
        console.print(f"[red]unexpected exit status {result.returncode}[/]")
        sys.exit(1)
    return output


def make_data() -> None:
    rng = random.Random(SEED)
    start = datetime(2026, 1, 1)
    categories = ["grocery", "travel", "fuel", "electronics", "dining"]
    with (OUT / "transactions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["card_id", "merchant_id", "amount", "category", "ts"])
        for _ in range(5000):
            writer.writerow(
                [
                    f"card-{rng.randrange(800):04d}",
                    f"m-{rng.randrange(40):03d}",
                    f"{rng.lognormvariate(3.2, 0.9):.2f}",
                    rng.choice(categories),
                    (start + timedelta(minutes=rng.randrange(60 * 24 * 90))).isoformat(sep=" "),
                ]
            )
    (OUT / "transactions.schema.json").write_text(
        json.dumps(
            {
                "identity_column": "card_id",
                "columns": [
                    {"name": "card_id", "type": "string", "nullable": False},
                    {"name": "merchant_id", "type": "string", "nullable": False},
                    {"name": "amount", "type": "decimal(12,2)", "nullable": False, "min": 0},
                    {"name": "category", "type": "string", "allowed": categories},
                    {"name": "ts", "type": "timestamp", "nullable": False},
                ],
            },
            indent=2,
        )
    )
    with (OUT / "customers.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["card_id", "loyalty_tier", "age_band"])
        for card in rng.sample(range(800), 500):
            writer.writerow(
                [
                    f"card-{card:04d}",
                    rng.choice(["bronze", "silver", "gold"]),
                    rng.choice(["18-29", "30-44", "45-64", "65+"]),
                ]
            )
    (OUT / "customers.schema.json").write_text(
        json.dumps(
            {
                "identity_column": "card_id",
                "columns": [
                    {"name": "card_id", "type": "string", "nullable": False},
                    {
                        "name": "loyalty_tier",
                        "type": "string",
                        "allowed": ["bronze", "silver", "gold"],
                    },
                    {"name": "age_band", "type": "string"},
                ],
            },
            indent=2,
        )
    )


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    make_data()
    console.print(
        Panel.fit(
            "A bank and a merchant prepare data for a clean room.\n"
            "Each keeps its own keys; data leaves their machines only encrypted.",
            title="cleanroom demo",
        )
    )

    step("1. Each party creates its identity (signing + encryption keys)")
    cleanroom("party", "create", "bank", "--dir", "keys/bank")
    cleanroom("party", "create", "merchant", "--dir", "keys/merchant")
    cleanroom("party", "export", "--dir", "keys/bank", "-o", "bank.identity.json")
    cleanroom("party", "show", "--identity", "bank.identity.json")

    step("2. Each owner validates and encrypts its data against a declared schema")
    cleanroom(
        "dataset",
        "encrypt",
        "transactions.csv",
        "--schema",
        "transactions.schema.json",
        "--owner",
        "keys/bank",
        "-o",
        "transactions.sealed",
    )
    cleanroom(
        "dataset",
        "encrypt",
        "customers.csv",
        "--schema",
        "customers.schema.json",
        "--owner",
        "keys/merchant",
        "-o",
        "customers.sealed",
    )

    step("3. Bad rows are refused, naming row and column; nothing is written")
    lines = (OUT / "transactions.csv").read_text().splitlines()
    lines[42] = lines[42].rsplit(",", 2)[0] + ",casino," + lines[42].rsplit(",", 1)[1]
    (OUT / "bad.csv").write_text("\n".join(lines) + "\n")
    cleanroom(
        "dataset",
        "encrypt",
        "bad.csv",
        "--schema",
        "transactions.schema.json",
        "--owner",
        "keys/bank",
        "-o",
        "bad.sealed",
        expect_failure=True,
    )

    step("4. Anyone can verify the signed manifest; nobody without the key reads a row")
    cleanroom("dataset", "inspect", "transactions.sealed", "--identity", "bank.identity.json")
    console.print("[dim]# plain DuckDB, as a curious operator would try:[/]")
    try:
        duckdb.connect().execute(
            f"SELECT * FROM '{OUT / 'transactions.sealed' / 'data.parquet'}' LIMIT 1"
        ).fetchall()
        console.print("[red]plaintext was readable![/]")
        sys.exit(1)
    except duckdb.Error as exc:
        console.print(f"refused: {str(exc).splitlines()[0]}", highlight=False)
    console.print("[dim]# the merchant tries the bank's dataset with its own keys:[/]")
    cleanroom(
        "dataset",
        "decrypt",
        "transactions.sealed",
        "--owner",
        "keys/merchant",
        "-o",
        "stolen.csv",
        expect_failure=True,
    )

    step("5. Tampering with the ciphertext is caught before decryption")
    shutil.copytree(OUT / "transactions.sealed", OUT / "tampered.sealed")
    data = OUT / "tampered.sealed" / "data.parquet"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    cleanroom(
        "dataset",
        "decrypt",
        "tampered.sealed",
        "--owner",
        "keys/bank",
        "-o",
        "t.csv",
        expect_failure=True,
    )

    step("6. The owner decrypts its own data, exactly")
    cleanroom("dataset", "inspect", "transactions.sealed", "--owner", "keys/bank", "--rows", "3")
    cleanroom(
        "dataset",
        "decrypt",
        "transactions.sealed",
        "--owner",
        "keys/bank",
        "-o",
        "transactions.roundtrip.csv",
    )

    room = govern()

    step("11. Anyone in the room verifies the whole history offline")
    cleanroom("audit", "export", "--data-dir", "ledger", "--room", room, "-o", "room.ledger.json")
    cleanroom(
        "audit",
        "verify",
        "room.ledger.json",
        "--service-key",
        "ledger/service/identity.json",
        "--known-heads",
        "bank.heads.json",
    )
    cleanroom("audit", "log", "room.ledger.json", "--service-key", "ledger/service/identity.json")

    step("12. An operator that edits one entry of the ledger is caught")
    document = json.loads((OUT / "room.ledger.json").read_text())
    token = document["entries"][4]["statement"]
    document["entries"][4]["statement"] = token[:-1] + ("A" if token[-1] != "A" else "B")
    (OUT / "edited.ledger.json").write_text(json.dumps(document))
    cleanroom(
        "audit",
        "verify",
        "edited.ledger.json",
        "--service-key",
        "ledger/service/identity.json",
        expect_failure=True,
    )
    console.print(
        Panel.fit(
            "Done. Files are in ./demo-output. Next: the hosted service and attested enclave jobs.",
            title="cleanroom demo",
        )
    )


def submit(ledger: Ledger, room: str, token: str, what: str) -> str:
    entry = ledger.submit(room, [token])[0]
    console.print(f"[dim]ledger entry {entry.seq}:[/] {what}")
    return statement_digest(token)


def govern() -> str:
    """Steps 7-10: a room, its members, datasets, an analysis and a revocation."""
    bank = Party.load(OUT / "keys" / "bank")
    merchant = Party.load(OUT / "keys" / "merchant")
    ledger = open_ledger(OUT / "ledger")
    room = new_room_id()

    step("7. The bank creates a room; the merchant accepts (signed statements)")
    create = room_create(
        bank,
        room,
        name="personalised-offers",
        members=[
            (bank.identity_document(), ["data_provider", "result_recipient"]),
            (merchant.identity_document(), ["data_provider", "analyst"]),
        ],
    )
    ledger.create_room(create)
    console.print(f"[dim]ledger entry 0:[/] bank creates room {room}")
    submit(
        ledger, room, member_accept(merchant, room, statement_digest(create)), "merchant accepts"
    )
    console.print(f"room status: {ledger.state(room).status}")

    step("8. Each owner registers its dataset; the constitution says who approves")
    for owner, name in ((bank, "transactions"), (merchant, "customers")):
        manifest = json.loads((OUT / f"{name}.sealed" / "manifest.json").read_text())
        pid = submit(
            ledger,
            room,
            propose(owner, room, {"type": "register_dataset", "manifest": manifest}),
            f"{owner.name} proposes {name}",
        )
        approvers = ledger.state(room).proposals[pid].approvers
        names = sorted(ledger.state(room).members[a].identity.name for a in approvers)
        console.print(f"  required approvers: {', '.join(names)}")
        for voter in (bank, merchant):
            if voter.fingerprint in approvers:
                submit(ledger, room, vote(voter, room, pid, approve=True), f"{voter.name} approves")
        console.print(f"  proposal {ledger.state(room).proposals[pid].status}")

    step("9. The merchant proposes an analysis; both owners approve it")
    sql = (
        "SELECT c.loyalty_tier, t.category, count(DISTINCT t.card_id) AS cards "
        "FROM transactions t JOIN customers c USING (card_id) GROUP BY ALL"
    )
    pid = submit(
        ledger,
        room,
        propose(
            merchant,
            room,
            {
                "type": "add_analysis",
                "name": "offer-segments",
                "language": "sql",
                "text": sql,
                "inputs": ["transactions", "customers"],
                "recipients": [bank.fingerprint],
            },
        ),
        "merchant proposes the offer-segments analysis",
    )
    submit(ledger, room, vote(bank, room, pid, approve=True), "bank approves")
    submit(ledger, room, vote(merchant, room, pid, approve=True), "merchant approves")
    console.print(f"contract version {ledger.state(room).contract_version}")

    step("10. The merchant stops its data being used at once: no vote needed")
    submit(
        ledger,
        room,
        revoke_consent(merchant, room, "customers"),
        "merchant revokes consent for customers",
    )
    state = ledger.state(room)
    console.print(
        f"customers consent: {state.datasets['customers'].consent}; "
        f"contract version {state.contract_version}"
    )
    ledger.store.close()
    return room


def _unused() -> None:
    cleanroom("dataset", "inspect", "transactions.sealed", "--owner", "keys/bank", "--rows", "3")
    cleanroom(
        "dataset",
        "decrypt",
        "transactions.sealed",
        "--owner",
        "keys/bank",
        "-o",
        "transactions.roundtrip.csv",
    )
    console.print(
        Panel.fit(
            "Done. Files are in ./demo-output. Next: rooms, a ledger and consensus governance.",
            title="cleanroom demo",
        )
    )


if __name__ == "__main__":
    main()
