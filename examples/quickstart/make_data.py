"""Regenerate the quickstart's made-up CSVs (deterministic: the same files every run).

The bank's card transactions and the merchant's customers share a customer id
(in real life a salted hash both agree on). Every value is invented. The
"islands" region has only three customers, so the quickstart's query shows a
group that the five-customer threshold suppresses.

    python examples/quickstart/make_data.py
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).parent
CATEGORIES = ["grocery", "dining", "travel", "fuel"]
REGIONS = ["north", "south", "east", "west"]
TIERS = ["bronze", "silver", "gold"]


def main() -> None:
    rng = random.Random(20260114)
    ids = [f"c{i:03d}" for i in range(1, 61)]
    with (HERE / "customers.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["customer_id", "region", "tier", "opted_in"])
        for number, customer in enumerate(ids):
            region = "islands" if number < 3 else REGIONS[number % 4]
            opted_in = "true" if number < 3 or rng.random() < 0.85 else "false"
            writer.writerow([customer, region, rng.choice(TIERS), opted_in])
    with (HERE / "transactions.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["txn_id", "customer_id", "day", "category", "amount"])
        for txn in range(1, 401):
            day = date(2026, 1, 1) + timedelta(days=rng.randrange(90))
            amount = round(rng.uniform(2, 250), 2)
            customer = ids[txn % 3] if txn <= 12 else rng.choice(ids)  # islanders shop too
            writer.writerow([txn, customer, day.isoformat(), rng.choice(CATEGORIES), amount])


if __name__ == "__main__":
    main()
