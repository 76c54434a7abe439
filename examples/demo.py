"""`make demo`: the personalised-offers scenario, end to end, with separate processes.

A bank holds about a million card transactions; a merchant holds 100,000
customer records; both key customers by the same salted hash. An analyst
proposes an SQL analysis; both owners approve it. A clean room service
(`cleanroom serve`) hosts the room; every party acts through its own
`cleanroom` command line and its own keystore. The analysis runs in an
enclave process that must attest before each data owner's own key agent
releases its data key (the keys never leave the owners' machines otherwise);
the result is sealed to the bank alone. The merchant cannot read it, nor can
the operator; a revoked consent stops the next run at once; and anyone in the
room verifies the whole history offline.

This demo uses the *insecure virtual platform*: the enclave is an ordinary
process and no hardware protects the data while it runs. Rooms accept it only
because every member approved it explicitly. On AMD SEV-SNP or Intel TDX the
same protocol runs with hardware evidence.

Everything is written under ./demo-output, recreated on every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from rich.console import Console
from rich.panel import Panel

from cleanroom import Party
from cleanroom.client import Client
from cleanroom.service.local import free_port, local_service

OUT = Path("demo-output")
SALT = "offers-2026-shared-salt:"  # agreed by the bank and the merchant out of band
console = Console()

OFFERS_SQL = """\
SELECT c.segment,
       t.category,
       COUNT(DISTINCT t.customer_hash) AS customers,
       COUNT(*) AS transactions,
       SUM(t.amount) AS spend,
       ROUND(AVG(t.amount), 2) AS avg_ticket
FROM transactions t
JOIN customers c ON t.customer_hash = c.customer_hash
WHERE c.opted_in
GROUP BY c.segment, t.category
HAVING COUNT(DISTINCT t.customer_hash) >= 50
ORDER BY spend DESC
"""


# What each owner lets leave the enclave: aggregates only, over at least N customers.
RULES = {
    "transactions": {
        "type": "aggregation",
        "aggregates": [
            {"function": "count_distinct", "columns": ["customer_hash"]},
            {"function": "sum", "columns": ["amount"]},
            {"function": "avg", "columns": ["amount"]},
        ],
        "dimensions": ["category"],
        "join_columns": ["customer_hash"],
        "scalar_functions": ["round"],
        "min_distinct": 100,
    },
    "customers": {
        "type": "aggregation",
        "aggregates": [{"function": "count_distinct", "columns": ["customer_hash"]}],
        "dimensions": ["segment", "region", "opted_in"],
        "join_columns": ["customer_hash"],
        "scalar_functions": ["round"],
        "min_distinct": 50,
    },
}
LEAK_SQL = """\
SELECT t.customer_hash, SUM(t.amount) AS spend
FROM transactions t
GROUP BY t.customer_hash
"""


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
    """Seeded synthetic data: deterministic hashes, no randomness between runs."""
    con = duckdb.connect()
    con.execute(f"""
        COPY (
          SELECT sha256('{SALT}' || i::VARCHAR) AS customer_hash,
                 (['young-urban', 'family', 'retired', 'student', 'professional'])
                   [1 + (hash(i) % 5)::INT] AS segment,
                 (['north', 'south', 'east', 'west'])[1 + (hash(i * 7) % 4)::INT] AS region,
                 (hash(i * 13) % 10) < 7 AS opted_in
          FROM range(100000) t(i)
        ) TO 'customers.parquet' (FORMAT parquet)""")
    con.execute(f"""
        COPY (
          SELECT i AS txn_id,
                 sha256('{SALT}' || (hash(i) % 150000)::VARCHAR) AS customer_hash,
                 (1 + (hash(i * 3) % 30000) / 100.0)::DECIMAL(12, 2) AS amount,
                 (['grocery', 'travel', 'dining', 'fuel', 'electronics', 'fashion'])
                   [1 + (hash(i * 5) % 6)::INT] AS category,
                 TIMESTAMP '2026-01-01' + to_seconds((hash(i * 11) % (300 * 86400))::BIGINT) AS ts
          FROM range(1000000) t(i)
        ) TO 'transactions.parquet' (FORMAT parquet)""")
    con.close()
    schemas = {
        "transactions": {
            "identity_column": "customer_hash",
            "columns": [
                {"name": "txn_id", "type": "int64", "nullable": False},
                {"name": "customer_hash", "type": "string", "nullable": False},
                {"name": "amount", "type": "decimal(12,2)", "nullable": False, "min": 0},
                {
                    "name": "category",
                    "type": "string",
                    "allowed": ["grocery", "travel", "dining", "fuel", "electronics", "fashion"],
                },
                {"name": "ts", "type": "timestamp"},
            ],
        },
        "customers": {
            "identity_column": "customer_hash",
            "columns": [
                {"name": "customer_hash", "type": "string", "nullable": False},
                {"name": "segment", "type": "string"},
                {"name": "region", "type": "string"},
                {"name": "opted_in", "type": "boolean", "nullable": False},
            ],
        },
    }
    for name, schema in schemas.items():
        (Path(f"{name}.schema.json")).write_text(json.dumps(schema, indent=2))
    for name, rule in RULES.items():
        (Path(f"{name}.rule.json")).write_text(json.dumps(rule, indent=2))
    (Path("leak.sql")).write_text(LEAK_SQL)
    (Path("offers.sql")).write_text(OFFERS_SQL)


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    console.print(
        Panel.fit(
            "Scenario 1: personalised offers. A bank and a merchant pool card transactions\n"
            "and customer records; an analyst's approved SQL runs in an attested enclave;\n"
            "only the bank receives the result.\n\n"
            "[bold yellow]This demo runs on the insecure virtual platform: the enclave is a\n"
            "plain process and no hardware protects data while it runs. Every member\n"
            "approves that explicitly; real rooms use AMD SEV-SNP or Intel TDX.[/]",
            title="cleanroom demo",
        )
    )
    step("1. Three parties create their identities, each on its own machine")
    for name in ("bank", "merchant", "analyst"):
        cleanroom("party", "create", name, "--dir", f"keys/{name}")
        cleanroom("party", "export", "--dir", f"keys/{name}", "-o", f"{name}.identity.json")

    step("2. Seeded synthetic data: 1,000,000 transactions, 100,000 customers")
    cwd = Path.cwd()
    os.chdir(OUT)
    try:
        make_data()
    finally:
        os.chdir(cwd)
    console.print("transactions.parquet (bank), customers.parquet (merchant), offers.sql (analyst)")

    with running_service() as url:
        scenario(url)
    console.print(
        Panel.fit(
            f"Done in {time.monotonic() - started:.0f} s. Files are in ./demo-output.\n"
            "The result was computed on the insecure virtual platform: fine for a demo,\n"
            "never for real data.",
            title="cleanroom demo",
        )
    )


def scenario(url: str) -> None:
    bank, merchant, analyst = (
        {"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": f"keys/{name}"}
        for name in ("bank", "merchant", "analyst")
    )
    step("3. The bank creates the room; the merchant and the analyst join")
    created = cleanroom(
        "room",
        "create",
        "personalised-offers",
        "--roles",
        "data_provider,result_recipient",
        "--member",
        "merchant.identity.json:data_provider",
        "--member",
        "analyst.identity.json:analyst",
        env=bank,
    )
    room = created.split("Created room personalised-offers: ")[1].split()[0]
    cleanroom("room", "join", "--room", room, env=merchant)
    cleanroom("room", "join", "--room", room, env=analyst)

    step("4. Each owner seals its data locally and uploads ciphertext; its key stays home")
    for env, name in ((bank, "transactions"), (merchant, "customers")):
        cleanroom(
            "dataset",
            "publish",
            f"{name}.parquet",
            "--schema",
            f"{name}.schema.json",
            "--allow-insecure-virtual",
            "--rule",
            f"{name}.rule.json",
            "--room",
            room,
            env=env,
        )
    approve_all(room, bank, merchant, analyst)
    with key_agents(room, bank, merchant):
        rest_of_scenario(room, bank, merchant, analyst)


@contextlib.contextmanager
def key_agents(room: str, *envs: dict[str, str]) -> Iterator[None]:
    """Each data owner runs its own key agent, a process beside its command line:
    it checks every key request itself and releases its key to attested enclaves only."""
    step("4b. Each owner starts its key agent: its data key never leaves its machine")
    agents = []
    for env in envs:
        command = ["keys", "serve", "--room", room, "--poll", "0.2"]
        console.print(
            f"[dim]$[/] [dim]({env['CLEANROOM_KEYSTORE'].split('/')[-1]})[/] "
            f"[bold]cleanroom {shlex.join(command)} &[/]"
        )
        log = (OUT / f"agent-{env['CLEANROOM_KEYSTORE'].split('/')[-1]}.log").open("w")
        agents.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "cleanroom", *command],
                    cwd=OUT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                ),
                log,
            )
        )
    try:
        yield
    finally:
        for process, log in agents:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def rest_of_scenario(
    room: str, bank: dict[str, str], merchant: dict[str, str], analyst: dict[str, str]
) -> None:
    step("5. The room approves the enclave runtime it trusts (its measurement)")
    cleanroom("enclave", "measure")
    cleanroom(
        "enclave",
        "approve",
        "--this-install",
        "--allow-insecure-virtual",
        "--room",
        room,
        env=analyst,
    )
    approve_all(room, bank, merchant, analyst)

    step("6. A query that would leak one customer's spending is refused at once")
    console.print(LEAK_SQL, highlight=False, markup=False)
    cleanroom(
        "analysis",
        "propose",
        "leak",
        "--sql",
        "leak.sql",
        "--input",
        "transactions",
        "--recipient",
        "bank",
        "--room",
        room,
        env=analyst,
        expect_failure=True,
    )

    step("7. The analyst proposes the offers analysis; both data owners approve it")
    console.print(OFFERS_SQL, highlight=False, markup=False)
    cleanroom(
        "analysis",
        "propose",
        "offers",
        "--sql",
        "offers.sql",
        "--input",
        "transactions",
        "--input",
        "customers",
        "--recipient",
        "bank",
        "--room",
        room,
        env=analyst,
    )
    approve_all(room, bank, merchant, analyst)
    cleanroom("room", "show", "--room", room, env=bank)

    step("8. The analyst runs it: the enclave attests, each owner's agent releases its key")
    cleanroom("job", "run", "offers", "--room", room, env=analyst)
    job = job_id(room, analyst)

    step("9. Only the bank can decrypt the result")
    cleanroom("job", "result", job, "-o", "offers.csv", "--room", room, env=bank)
    rows = (OUT / "offers.csv").read_text().splitlines()
    console.print("\n".join(rows[:8]) + f"\n... ({len(rows) - 1} rows)", highlight=False)
    cleanroom(
        "job", "result", job, "-o", "stolen.csv", "--room", room, env=merchant, expect_failure=True
    )
    operator_view(room, analyst)

    step("10. The merchant revokes consent: the next run is refused at once, no vote")
    cleanroom("consent", "revoke", "customers", "--room", room, env=merchant)
    cleanroom("job", "run", "offers", "--room", room, env=analyst, expect_failure=True)

    step("11. Anyone in the room verifies the whole history offline")
    cleanroom("audit", "export", "--room", room, "-o", "room.ledger.json", env=merchant)
    key = "service-data/service/identity.json"
    cleanroom("audit", "verify", "room.ledger.json", "--service-key", key)
    cleanroom("audit", "log", "room.ledger.json", "--service-key", key)


def approve_all(room: str, *envs: dict[str, str]) -> None:
    for env in envs:
        for proposal in open_proposals(room, env):
            cleanroom("proposal", "approve", proposal, "--room", room, env=env)


def open_proposals(room: str, env: dict[str, str]) -> list[str]:
    """Open proposals this party can still vote on, read through the SDK."""
    with sdk(env) as client:
        party = client.party
        return [
            p["id"][:16]
            for p in client.room(room).proposals()
            if p["status"] == "open"
            and party.name in p["approvers"]
            and party.name not in p["approvals"]
        ]


@contextmanager
def sdk(env: dict[str, str]) -> Iterator[Client]:
    party_dir = OUT / env["CLEANROOM_KEYSTORE"]
    with Client(
        env["CLEANROOM_SERVICE"], Party.load(party_dir), state_dir=party_dir / "state"
    ) as client:
        yield client


def job_id(room: str, env: dict[str, str]) -> str:
    with sdk(env) as client:
        jobs = client.room(room).jobs()
    return str(jobs[-1]["id"][:16])


def operator_view(room: str, env: dict[str, str]) -> None:
    """What the operator holds: the result's ciphertext, unreadable without a key."""
    with sdk(env) as client:
        output = client.room(room).jobs()[-1]["output"]
    blob = next((OUT / "service-data" / "results").rglob(output["sha256"]))
    console.print(f"[dim]the operator's copy of the result: {blob.relative_to(OUT)}[/]")
    try:
        duckdb.sql(f"SELECT * FROM read_parquet('{blob}')").fetchall()
        console.print("[red]the operator could read the result[/]")
        sys.exit(1)
    except duckdb.Error as exc:
        console.print(f"plain DuckDB on it: [green]{str(exc).splitlines()[0]}[/]")


@contextmanager
def running_service() -> Iterator[str]:
    """`cleanroom serve` as its own process, on a free local port."""
    port = free_port()
    console.print(f"[dim]$[/] [bold]cleanroom serve --data-dir service-data --port {port}[/]")
    with local_service(OUT / "service-data", port=port, log=OUT / "service.log") as url:
        yield url


if __name__ == "__main__":
    main()
