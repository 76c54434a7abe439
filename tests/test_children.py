"""The service's child processes see an allow-list of its environment: its
secrets (a database URL with a password, the metrics token) never reach them."""

from __future__ import annotations

from cleanroom.children import child_environment


def test_only_the_allow_list_reaches_a_child() -> None:
    environ = {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/src",
        "COV_CORE_SOURCE": "cleanroom",
        "CLEANROOM_DATABASE_URL": "postgresql://service:secret@db/ledger",
        "CLEANROOM_METRICS_TOKEN": "t0ken",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LD_PRELOAD": "/tmp/evil.so",
    }
    assert child_environment(environ) == {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/src",
        "COV_CORE_SOURCE": "cleanroom",
    }
