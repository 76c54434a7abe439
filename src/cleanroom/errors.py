"""The one exception hierarchy of cleanroom.

Two branches under one root:

* :class:`InvalidInputError`: the input is bad or hostile (a corrupt file, a
  forged signature, data that breaks its schema). Retrying will not help; the
  input must change.
* :class:`OperationalError`: the environment failed (disk, network, a
  database). Retrying may help.

Programmer misuse (wrong argument types, calling things in the wrong order)
raises the built-in ``TypeError`` / ``ValueError`` / ``RuntimeError`` instead.

At trust boundaries errors are opaque on purpose: every failure to decrypt or
to verify a signature is an :class:`IntegrityError` whose message does not say
which byte, key or tag was wrong.
"""

from __future__ import annotations


class CleanroomError(Exception):
    """Root of every error cleanroom raises on purpose."""


class InvalidInputError(CleanroomError):
    """The input is malformed, hostile or does not meet a rule."""


class IntegrityError(InvalidInputError):
    """Decryption or signature verification failed.

    This is the one error for every integrity failure: a wrong key, a flipped
    bit, a truncated or reordered stream, a forged or misplaced signature.
    Nothing decrypted is ever returned alongside it.
    """


class AttestationError(InvalidInputError):
    """Attestation evidence is malformed, not signed by a trusted chain, or
    does not meet the policy (debug mode, wrong measurement, stale TCB)."""


class ForkError(IntegrityError):
    """A ledger showed two different histories: same size with different roots,
    or a newer tree head that does not extend an older one."""


class RollbackError(IntegrityError):
    """A ledger showed fewer entries (or an older time) than it showed before."""


class GovernanceError(InvalidInputError):
    """A statement is not allowed in the room's current state: an unknown or
    removed member, a closed proposal, a duplicate ballot, a replayed statement."""


class PolicyError(GovernanceError):
    """An analysis that its inputs' rules do not allow; the message names the
    expression and the rule."""


class AuthenticationError(InvalidInputError):
    """A request is unsigned, wrongly signed, stale, replayed or from an unknown key."""


class AuthorizationError(InvalidInputError):
    """An authenticated party asked for something its membership does not allow."""


class NotFoundError(InvalidInputError):
    """The room, entry or object asked for does not exist (or is not visible)."""


class DeserializationError(InvalidInputError):
    """A file or message could not be parsed into the expected structure."""


class KeystoreError(InvalidInputError):
    """A keystore is missing, unsafe (file permissions) or unreadable."""


class SchemaError(InvalidInputError):
    """A schema declaration is itself invalid."""


class ValidationError(InvalidInputError):
    """Data does not conform to its declared schema.

    ``row`` is 1-based, counting data rows (a CSV header is not a row);
    ``column`` names the offending column. Either may be ``None`` when the
    problem is not tied to one row or column (an empty file, a missing column).
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.row = row
        self.column = column


class RateLimitedError(InvalidInputError):
    """Too many requests of one kind from one party: try again later."""


class ModelRefusedError(InvalidInputError):
    """A model the enclave refuses: not ONNX, against a rule of the enclave
    (external data, an op domain outside the allow-list, a non-tensor input or
    output), or with a signature other than its manifest's. Its text names what
    is wrong, never the model's bytes or weights."""


class ConversionError(InvalidInputError):
    """A vendor's model does not convert to an ONNX model the enclave accepts,
    or the converted model does not predict what the native model predicts."""


class OperationalError(CleanroomError):
    """The environment failed: storage, network or an external service."""


class StorageError(OperationalError):
    """Reading or writing local storage failed."""


class SandboxUnavailableError(OperationalError):
    """This machine cannot confine a Python job (neither Landlock nor seccomp), or the
    sandbox user cannot reach what the job needs. Nothing was run."""


class MissingExtraError(OperationalError):
    """This install lacks an optional extra (``[dp]``, ``[ml]``, the server's
    onnxruntime). Its text is fixed and names the extra to install, never
    anything of a job's data."""
