"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cleanroom.errors import KeystoreError
from cleanroom.identities import Party

PASSPHRASE_ENV = "CLEANROOM_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def passphrase(*, confirm: bool) -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise KeystoreError(f"a passphrase is needed: set {PASSPHRASE_ENV} or run in a terminal")
    value: str = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


def load_party(directory: Path) -> Party:
    secret = passphrase(confirm=False) if Party.is_protected(directory) else None
    return Party.load(directory, passphrase=secret)
