"""Keystores and public identities: round trips, passphrases, unsafe files,
corruption and forged identity files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party, PublicIdentity
from cleanroom.crypto.documents import sign_document
from cleanroom.errors import (
    DeserializationError,
    IntegrityError,
    KeystoreError,
    StorageError,
)
from cleanroom.identities import KdfParams
from cleanroom.identities.identity import IDENTITY_TYP
from cleanroom.identities.keystore import IDENTITY_FILE, KEYSTORE_FILE

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


def _rewrite(path: Path, edit: Any) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def test_save_and_load_round_trip(tmp_path: Path, bank: Party) -> None:
    bank.save(tmp_path / "bank")
    loaded = Party.load(tmp_path / "bank")
    assert loaded.fingerprint == bank.fingerprint
    assert loaded.name == "bank"
    assert (tmp_path / "bank" / KEYSTORE_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bank").stat().st_mode & 0o777 == 0o700
    identity = PublicIdentity.load(tmp_path / "bank" / IDENTITY_FILE)
    assert identity.fingerprint == bank.fingerprint


def test_passphrase_round_trip_and_wrong_passphrase(tmp_path: Path, bank: Party) -> None:
    bank.save(tmp_path / "k", passphrase="correct horse", params=FAST)
    assert Party.is_protected(tmp_path / "k")
    assert Party.load(tmp_path / "k", passphrase="correct horse").fingerprint == bank.fingerprint
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        Party.load(tmp_path / "k", passphrase="wrong")
    with pytest.raises(KeystoreError, match="protected by a passphrase"):
        Party.load(tmp_path / "k")


def test_default_kdf_is_rfc9106_second_recommendation(bank: Party) -> None:
    document = bank.to_keystore("pw")
    protection = document["protection"]
    assert (protection["kdf"], protection["memory_kib"], protection["iterations"]) == (
        "argon2id",
        65536,
        3,
    )


def test_private_keys_are_not_in_the_protected_file(tmp_path: Path, bank: Party) -> None:
    from cleanroom.crypto.encoding import b64url_encode  # noqa: PLC0415
    from cleanroom.crypto.keys import private_bytes  # noqa: PLC0415

    bank.save(tmp_path / "k", passphrase="pw", params=FAST)
    text = (tmp_path / "k" / KEYSTORE_FILE).read_text()
    assert b64url_encode(private_bytes(bank.signing_private)) not in text
    assert b64url_encode(private_bytes(bank.encryption_private)) not in text


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keystore_readable_by_others_is_refused(tmp_path: Path, bank: Party, mode: int) -> None:
    bank.save(tmp_path / "k")
    (tmp_path / "k" / KEYSTORE_FILE).chmod(mode)
    with pytest.raises(KeystoreError, match="chmod 600"):
        Party.load(tmp_path / "k")


def test_existing_keystore_is_never_overwritten(
    tmp_path: Path, bank: Party, merchant: Party
) -> None:
    bank.save(tmp_path / "k")
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        merchant.save(tmp_path / "k")
    assert Party.load(tmp_path / "k").fingerprint == bank.fingerprint


def test_missing_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no keystore"):
        Party.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", DeserializationError),
        (b"{not json", DeserializationError),
        (b"[]", DeserializationError),
        (b'{"format": "cleanroom-keystore"}', DeserializationError),
        (b"\xff\xfe\x00", DeserializationError),
    ],
)
def test_corrupt_keystore_files(tmp_path: Path, bank: Party, content: bytes, error: type) -> None:
    bank.save(tmp_path / "k")
    (tmp_path / "k" / KEYSTORE_FILE).write_bytes(content)
    with pytest.raises(error):
        Party.load(tmp_path / "k")


def test_truncated_keystore(tmp_path: Path, bank: Party) -> None:
    bank.save(tmp_path / "k")
    path = tmp_path / "k" / KEYSTORE_FILE
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DeserializationError):
        Party.load(tmp_path / "k")


def test_keystore_with_keys_of_another_party(tmp_path: Path, bank: Party, merchant: Party) -> None:
    bank.save(tmp_path / "k")
    other = merchant.to_keystore(None)
    _rewrite(tmp_path / "k" / KEYSTORE_FILE, lambda d: d.update(secret=other["secret"]))
    with pytest.raises(KeystoreError, match="do not match its fingerprint"):
        Party.load(tmp_path / "k")


@pytest.mark.parametrize("field", ["name", "fingerprint", "protection"])
def test_protected_keystore_fields_are_authenticated(
    tmp_path: Path, bank: Party, field: str
) -> None:
    bank.save(tmp_path / "k", passphrase="pw", params=FAST)

    def edit(document: dict[str, Any]) -> None:
        if field == "protection":
            document["protection"]["iterations"] = 2
        elif field == "name":
            document["name"] = "attacker"
        else:
            document["fingerprint"] = "0" * 64

    _rewrite(tmp_path / "k" / KEYSTORE_FILE, edit)
    with pytest.raises(IntegrityError):
        Party.load(tmp_path / "k", passphrase="pw")


@pytest.mark.parametrize(
    "protection",
    [
        {"memory_kib": 4 * 1024 * 1024},  # 4 GiB: would exhaust memory
        {"iterations": 10_000},
        {"lanes": 0},
        {"memory_kib": 1},
    ],
)
def test_crafted_kdf_parameters_are_bounded(
    tmp_path: Path, bank: Party, protection: dict[str, int]
) -> None:
    bank.save(tmp_path / "k", passphrase="pw", params=FAST)
    _rewrite(tmp_path / "k" / KEYSTORE_FILE, lambda d: d["protection"].update(protection))
    with pytest.raises(KeystoreError, match="KDF"):
        Party.load(tmp_path / "k", passphrase="pw")


@pytest.mark.parametrize("name", ["", " lead", "a" * 65, "semi;colon", "new\nline", "../up"])
def test_invalid_party_names(name: str) -> None:
    with pytest.raises(DeserializationError, match="party name"):
        Party.create(name)


# -- public identity files ---------------------------------------------------


def test_identity_name_change_breaks_the_self_signature(bank: Party) -> None:
    document = bank.identity_document()
    document["payload"]["name"] = "bank-of-the-attacker"
    with pytest.raises(IntegrityError, match="failed"):
        PublicIdentity.from_document(document)


def test_identity_with_swapped_encryption_key_is_refused(bank: Party, merchant: Party) -> None:
    document = bank.identity_document()
    document["payload"]["encryption_key"] = merchant.identity.payload()["encryption_key"]
    with pytest.raises(IntegrityError, match="fingerprint does not match"):
        PublicIdentity.from_document(document)


def test_identity_resigned_by_an_impostor_is_refused(bank: Party, merchant: Party) -> None:
    # the impostor keeps the bank's public keys but signs with its own key
    forged = sign_document(
        bank.identity.payload(), merchant.signing_private, kid=bank.fingerprint, typ=IDENTITY_TYP
    )
    with pytest.raises(IntegrityError, match="failed"):
        PublicIdentity.from_document(forged)


def test_identity_signature_of_another_type_is_refused(bank: Party) -> None:
    forged = bank.sign_document(bank.identity.payload(), typ="cleanroom-dataset-manifest+jws")
    with pytest.raises(IntegrityError, match="expected"):
        PublicIdentity.from_document(forged)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(signing_key="AAAA"),
        lambda p: p.update(version=2),
        lambda p: p.update(extra="x"),
        lambda p: p.pop("fingerprint"),
    ],
)
def test_malformed_identity_payloads(bank: Party, edit: Any) -> None:
    document = bank.identity_document()
    edit(document["payload"])
    with pytest.raises(DeserializationError):
        PublicIdentity.from_document(document)


def test_identity_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        PublicIdentity.load(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DeserializationError, match="empty"):
        PublicIdentity.load(tmp_path / "empty.json")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_keystore_directory_others_can_write_is_refused(
    tmp_path: Path, bank: Party, mode: int
) -> None:
    """Whoever can write the directory can swap the keystore for one holding other
    keys (an unprotected one, say): refused before anything is read."""
    bank.save(tmp_path / "k")
    (tmp_path / "k").chmod(mode)
    with pytest.raises(KeystoreError, match="go-w"):
        Party.load(tmp_path / "k")
    (tmp_path / "k").chmod(0o700)
    assert Party.load(tmp_path / "k").fingerprint == bank.fingerprint
