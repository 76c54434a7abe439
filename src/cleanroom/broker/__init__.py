"""Key release: the service's key desk and the attested key broker.

:mod:`cleanroom.broker.protocol` holds the HPKE contexts every side shares;
:mod:`cleanroom.broker.desk` the service's bookkeeping (it opens nothing);
:mod:`cleanroom.broker.attested` the broker that runs in its own attested
process (:mod:`cleanroom.broker.link` starts it and talks to it).
"""

from cleanroom.broker.protocol import (
    deposit_context,
    open_released,
    release_context,
    seal_deposit,
    seal_release,
)

__all__ = ["deposit_context", "open_released", "release_context", "seal_deposit", "seal_release"]
