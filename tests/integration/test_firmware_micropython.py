"""The firmware's tests under a real MicroPython (WebAssembly port from npm, run by Node.js)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def test_the_firmware_tests_pass_under_micropython_and_the_version_is_printed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed: scripts/services.sh installs them")
    done = subprocess.run(
        ["bash", str(FIRMWARE / "test-micropython.sh")],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^MicroPython 1\.\d+\.\d+ .*MicroPython v1\.", done.stdout, re.M), done.stdout
    source = (FIRMWARE / "tests" / "test_vendproto.py").read_text()
    expected = len(re.findall(r"^def test_", source, re.M))
    assert f"{expected} passed, 0 failed" in done.stdout, done.stdout
    # The board glue needs `machine`, which this port lacks: MicroPython compiles it at least.
    assert "compiled 5 board modules, 0 failed" in done.stdout, done.stdout
    assert "FAIL" not in done.stdout
