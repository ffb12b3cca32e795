"""The firmware's pure protocol module under CPython: the same tests MicroPython runs."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def _firmware_tests() -> list[tuple[str, Callable[[], None]]]:
    for path in (FIRMWARE, FIRMWARE / "tests"):
        if str(path) not in sys.path:
            sys.path.append(str(path))  # appended: firmware/config.py must not shadow anything
    module = importlib.import_module("test_vendproto")
    return [
        (name, getattr(module, name)) for name in sorted(dir(module)) if name.startswith("test_")
    ]


FIRMWARE_TESTS = _firmware_tests()


@pytest.mark.parametrize("test", [t for _, t in FIRMWARE_TESTS], ids=[n for n, _ in FIRMWARE_TESTS])
def test_the_firmware_protocol_module_behaves_as_its_tests_say(test: Callable[[], None]) -> None:
    test()


def test_the_firmware_protocol_module_uses_nothing_micropython_lacks() -> None:
    source = (FIRMWARE / "vendproto.py").read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith("import ")}
    assert imports == {"json"}
    for construct in ("from typing", "@dataclass", "**{", "async def", ":="):
        assert construct not in source, construct
    assert not re.search(r"\bf[\"']", source), "f-strings"
