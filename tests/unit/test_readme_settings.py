"""The README's configuration table names every setting the code reads."""

from __future__ import annotations

from pathlib import Path

from vendhub.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = " ".join(line.split("|")[1] for line in table)
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in documented]
    assert missing == []
