"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cleanroom.errors import KeystoreError

if TYPE_CHECKING:
    from cleanroom.identities import Party

PASSPHRASE_ENV = "CLEANROOM_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
SERVICE_KEY_ENV = "CLEANROOM_SERVICE_KEY"
SERVICE_KEY_HELP = (
    "The service's identity given out of band (service.identity.json), or a rotation "
    "statement signed by the pinned key; checked against KEYSTORE/state/service-pins.json."
)


def passphrase(*, confirm: bool) -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise KeystoreError(f"a passphrase is needed: set {PASSPHRASE_ENV} or run in a terminal")
    value: str = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


def load_party(directory: Path) -> Party:
    from cleanroom.identities import Party  # noqa: PLC0415 - loads the crypto stack

    secret = passphrase(confirm=False) if Party.is_protected(directory) else None
    return Party.load(directory, passphrase=secret)


def use_service_key(path: Path | None) -> None:
    """``cleanroom --service-key FILE``: the option sets CLEANROOM_SERVICE_KEY for this run."""
    if path is not None:
        os.environ[SERVICE_KEY_ENV] = str(path)


def service_key() -> Path | None:
    """The service key given out of band for this run, if any."""
    value = os.environ.get(SERVICE_KEY_ENV)
    return Path(value) if value else None
