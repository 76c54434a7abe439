"""What travels between the parties, the service, enclaves and key brokers.

Invariant: this package is pure protocol code. The SDK, the service, the
enclave, the key broker and the owners' key agents all import it downward; it
imports nothing from :mod:`cleanroom.client`, :mod:`cleanroom.service`,
:mod:`cleanroom.enclave` or :mod:`cleanroom.agent` (tests/test_import_graph.py
pins this), so code that runs at a party's own site never needs the server.

* :mod:`cleanroom.protocol.requests`: how a request is signed (RFC 9421).
* :mod:`cleanroom.protocol.sealing`: the HPKE contexts binding a sealed key to
  one room, dataset version, job or result (domain separation lives here).
"""
