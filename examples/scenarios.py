"""`make demo SCENARIO=<name>`: run one of the product's scenarios end to end.

make demo                     the personalised-offers scenario (examples/demo.py)
make demo SCENARIO=clinical   a vendor's protected model scores a hospital's records
make demo SCENARIO=list       this list
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "offers": ("demo.py", "a bank and a merchant: aggregate offers over card transactions"),
    "clinical": ("clinical.py", "a hospital and a model vendor: trial candidates, model sealed"),
}


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "offers"
    if name not in SCENARIOS:
        if name != "list":
            print(f"no scenario {name!r}; choose one of:", file=sys.stderr)
        for key, (_, what) in SCENARIOS.items():
            print(
                f"  make demo SCENARIO={key:<9} {what}", file=sys.stderr if name != "list" else None
            )
        return 0 if name == "list" else 2
    runpy.run_path(str(HERE / SCENARIOS[name][0]), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
