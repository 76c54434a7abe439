"""The enclave runtime: what runs inside the TEE for each job.

Start it with ``python -m cleanroom.enclave``; see :mod:`cleanroom.enclave.runtime`.
"""
