"""Key release: the broker that gives data keys only to attested enclaves.

See :mod:`cleanroom.broker.broker` for the protocol and its checks.
"""

from cleanroom.broker.broker import (
    KeyBroker,
    deposit_context,
    open_released,
    release_context,
    seal_deposit,
)

__all__ = ["KeyBroker", "deposit_context", "open_released", "release_context", "seal_deposit"]
