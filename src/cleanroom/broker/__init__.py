"""Key release: the service's key desk and the attested key broker.

:mod:`cleanroom.broker.desk` is the service's bookkeeping (it opens nothing);
:mod:`cleanroom.broker.attested` the broker that runs in its own attested
process (:mod:`cleanroom.broker.link` starts it and talks to it). The HPKE
contexts every side shares are :mod:`cleanroom.protocol.sealing`.
"""
