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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import httpx
from rich.console import Console
from rich.panel import Panel

from cleanroom import Party
from cleanroom.client import Client

OUT = Path("demo-output")
SEED = 7
console = Console()


def step(title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{title}")


def cleanroom(*args: str, expect_failure: bool = False, env: dict[str, str] | None = None) -> str:
    # show who acts: the keystore named in the environment
    prefix = f"[dim]({env['CLEANROOM_KEYSTORE'].split('/')[-1]})[/] " if env else ""
    console.print(f"[dim]$[/] {prefix}[bold]cleanroom {shlex.join(args)}[/]")
    result = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=OUT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": str(console.width), **(env or {})},
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

    tampering_and_recovery()
    hosted_room()


def tampering_and_recovery() -> None:
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


def hosted_room() -> None:
    with running_service() as url:
        room = govern(url)

        step("11. Anyone in the room verifies the whole history offline")
        member = {"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": "keys/bank"}
        cleanroom("audit", "export", "--room", room, "-o", "room.ledger.json", env=member)
        cleanroom(
            "audit",
            "verify",
            "room.ledger.json",
            "--service-key",
            "service-data/service/identity.json",
        )
        cleanroom(
            "audit",
            "log",
            "room.ledger.json",
            "--service-key",
            "service-data/service/identity.json",
        )

        step("12. An operator that edits one entry of the ledger is caught")
        document = json.loads((OUT / "room.ledger.json").read_text())
        token = document["entries"][4]["statement"]
        flipped = "A" if token[-1] != "A" else "B"
        document["entries"][4]["statement"] = token[:-1] + flipped
        (OUT / "edited.ledger.json").write_text(json.dumps(document))
        cleanroom(
            "audit",
            "verify",
            "edited.ledger.json",
            "--service-key",
            "service-data/service/identity.json",
            expect_failure=True,
        )

        step("13. A stranger's key gets nothing from the service")
        cleanroom("party", "create", "stranger", "--dir", "keys/stranger")
        cleanroom(
            "room",
            "show",
            "--room",
            room,
            expect_failure=True,
            env={"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": "keys/stranger"},
        )
    console.print(
        Panel.fit(
            "Done. Files are in ./demo-output.\n"
            "Next: attested enclave jobs that run the approved SQL.",
            title="cleanroom demo",
        )
    )


@contextmanager
def running_service() -> Iterator[str]:
    """`cleanroom serve` as its own process, on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    console.print(f"[dim]$[/] [bold]cleanroom serve --data-dir service-data --port {port}[/]")
    log = (OUT / "service.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cleanroom",
            "serve",
            "--data-dir",
            "service-data",
            "--port",
            str(port),
        ],
        cwd=OUT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait()
        log.close()


def govern(url: str) -> str:
    """Steps 7-10: a room on the service, driven by each party through the CLI."""
    bank = {"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": "keys/bank"}
    merchant = {"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": "keys/merchant"}

    step("7. The bank creates a room on the service; the merchant joins")
    cleanroom("party", "export", "--dir", "keys/merchant", "-o", "merchant.identity.json")
    created = cleanroom(
        "room",
        "create",
        "personalised-offers",
        "--roles",
        "data_provider,result_recipient",
        "--member",
        "merchant.identity.json:data_provider,analyst",
        env=bank,
    )
    room = created.split("Created room personalised-offers: ")[1].split()[0]
    cleanroom("room", "join", "--room", room, env=merchant)

    step("8. Each owner publishes its dataset: sealed locally, only ciphertext uploaded")
    cleanroom(
        "dataset",
        "publish",
        "transactions.csv",
        "--schema",
        "transactions.schema.json",
        "--room",
        room,
        env=bank,
    )
    cleanroom(
        "dataset",
        "publish",
        "customers.csv",
        "--schema",
        "customers.schema.json",
        "--room",
        room,
        env=merchant,
    )
    cleanroom("proposal", "list", "--room", room, env=bank)
    for proposal in _open_proposals(room, bank):
        cleanroom("proposal", "approve", proposal, "--room", room, env=bank)
    for proposal in _open_proposals(room, merchant):
        cleanroom("proposal", "approve", proposal, "--room", room, env=merchant)
    cleanroom("dataset", "list", "--room", room, env=bank)

    step("9. The merchant proposes an analysis; both owners approve it")
    sql = (
        "SELECT c.loyalty_tier, t.category, count(DISTINCT t.card_id) AS cards "
        "FROM transactions t JOIN customers c USING (card_id) GROUP BY ALL"
    )
    party = Party.load(OUT / "keys" / "merchant")
    with Client(url, party, state_dir=OUT / "keys" / "merchant" / "state") as client:
        bank_fp = Party.load(OUT / "keys" / "bank").fingerprint
        console.print("[dim]>>> room.propose({'type': 'add_analysis', ...})  # from Python[/]")
        client.room(room).propose(
            {
                "type": "add_analysis",
                "name": "offer-segments",
                "language": "sql",
                "text": sql,
                "inputs": ["transactions", "customers"],
                "recipients": [bank_fp],
            }
        )
    for env in (bank, merchant):
        for proposal in _open_proposals(room, env):
            cleanroom("proposal", "approve", proposal, "--room", room, env=env)

    step("10. The merchant stops its data being used at once: no vote needed")
    cleanroom("consent", "revoke", "customers", "--room", room, env=merchant)
    cleanroom("room", "show", "--room", room, env=bank)
    return room


def _open_proposals(room: str, env: dict[str, str]) -> list[str]:
    """Open proposals this party can still vote on, read through the SDK."""
    party_dir = OUT / env["CLEANROOM_KEYSTORE"]
    party = Party.load(party_dir)
    with Client(env["CLEANROOM_SERVICE"], party, state_dir=party_dir / "state") as client:
        return [
            p["id"][:16]
            for p in client.room(room).proposals()
            if p["status"] == "open"
            and party.name in p["approvers"]
            and party.name not in p["approvals"]
        ]


if __name__ == "__main__":
    main()
