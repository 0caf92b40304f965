"""docs/results.md shows (embeds) every plot under docs/results/, and every image it embeds exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_embeds_every_committed_plot() -> None:
    page = ROOT / "docs" / "results.md"
    embedded = set(re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()))
    for link in embedded:
        assert (page.parent / link).is_file(), f"docs/results.md embeds a missing image: {link}"
    on_disk = {p.relative_to(page.parent).as_posix() for p in (page.parent / "results").rglob("*.png")}
    assert on_disk, "no plots under docs/results/"
    missing = sorted(on_disk - embedded)
    assert not missing, f"plots on disk that docs/results.md does not embed: {missing}"
