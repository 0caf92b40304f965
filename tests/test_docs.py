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


# Links to pages drafted on another branch: allowed missing until they land, and must then be removed from here
# (the test fails once the page exists, so the exception cannot outlive its reason).
PENDING: dict[str, str] = {}  # links to documents not written yet: path -> where they are being written


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, '-' and spaces kept),
    spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_links_of_the_readme_and_docs_resolve() -> None:
    """Every relative link of README.md and docs/*.md names a file that exists (and a heading of it, for
    `page.md#anchor`); web links are not fetched."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            rel = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
            if rel in PENDING:
                assert not file.exists(), f"{rel} exists now: remove it from PENDING in {__file__}"
                continue
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_newcomers_page() -> None:
    """Short; no stale `lowbit train` speed claim (its step clock was wrong, issue #27); one results table whose
    every row is the committed `lowbit bench train` result it names (measured with the fixed clock)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "SPEC" not in text  # a user of the repository cannot see the project's spec
    block = re.search(r"<!-- RESULTS-TABLE -->\n(.*?)<!-- /RESULTS-TABLE -->", text, re.S)
    assert block and block.group(1).count("\n|") >= 3
    source = ROOT / "bench/results/h100/train-vit-h-14.md"
    assert "train-vit-h-14.md" in text and source.is_file()
    measured = {cells[1]: cells for line in source.read_text().splitlines() if line.startswith("| vit-h-14 |")
                for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.group(1).strip().splitlines()[2:]]
    for recipe, _ms, images, _ratio, mfu in rows:
        assert recipe in measured, recipe
        assert measured[recipe][4] == images and measured[recipe][8] == mfu, (recipe, measured[recipe])
    for stale in ("710", "743", "1.05x bf16", "train-compile"):
        assert stale not in text, stale
