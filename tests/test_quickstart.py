"""The README's quickstart, run as written: every fenced block between
``<!-- quickstart:start -->`` and ``<!-- quickstart:end -->``, in order, in one
``bash -e`` (Python blocks through the venv's interpreter), in a fresh
directory holding only ``examples/quickstart`` and the project's ``.venv``,
against the real service the README starts (on a free port, through the
``CLEANROOM_PORT`` the README documents). About a minute on two cores.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cleanroom.service.local import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(sh|bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# what a user's shell would not have set: the quickstart exports its own
CLEARED = ("CLEANROOM_SERVICE", "CLEANROOM_KEYSTORE", "CLEANROOM_ROOM", "CLEANROOM_SERVICE_KEY")


def quickstart_script(readme: str) -> str:
    """The quickstart's blocks as one bash script."""
    start = readme.index("<!-- quickstart:start -->")
    end = readme.index("<!-- quickstart:end -->", start)
    parts = []
    for language, body in BLOCK.findall(readme[start:end]):
        if language == "python":
            parts.append(f"python - <<'QUICKSTART_PY'\n{body}QUICKSTART_PY\n")
        else:
            parts.append(body)
    if not parts:
        raise AssertionError("the README's quickstart has no code blocks")
    return "\n".join(parts)


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    first = BLOCK.search(README.read_text(encoding="utf-8"))
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
    assert commands == ["make demo", "make test"]


def test_the_script_takes_every_block_in_order() -> None:
    readme = (
        "```sh\nnot this\n```\n<!-- quickstart:start -->\n```sh\necho one\n```\n"
        "text\n```python\nprint(2)\n```\n<!-- quickstart:end -->\n```sh\nnor this\n```\n"
    )
    assert quickstart_script(readme) == (
        "echo one\n\npython - <<'QUICKSTART_PY'\nprint(2)\nQUICKSTART_PY\n"
    )


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip("the tests run outside a virtual environment: no .venv/bin/activate")
    script = tmp_path / "quickstart.sh"
    script.write_text(quickstart_script(README.read_text(encoding="utf-8")))
    shutil.copytree(ROOT / "examples" / "quickstart", tmp_path / "examples" / "quickstart")
    (tmp_path / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env |= {"CLEANROOM_PORT": str(free_port()), "COLUMNS": "160"}
    process = subprocess.Popen(
        ["bash", "-e", str(script)],  # noqa: S607
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background service and key agents: one group to stop
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    room = tmp_path / "my-room"
    assert process.returncode == 0, output[-4000:] + _log(room / "service.log")
    result = (room / "spend.csv").read_text().splitlines()
    assert result[0] == '"region","category","customers","spend"'
    assert len(result) == 17  # 4 regions x 4 categories
    assert not any('"islands"' in row for row in result)  # 3 customers: suppressed
    assert (room / "spend-again.csv").read_text().splitlines() == result  # the SDK's copy
    assert "policy check passed" in output  # the analyst's dry run
    assert "refused: the merchant revoked consent" in output
    assert "verified:" in output


def _log(path: Path) -> str:
    return "\n--- service.log ---\n" + path.read_text()[-3000:] if path.is_file() else ""
