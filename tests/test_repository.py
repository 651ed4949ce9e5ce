"""The repository stays lean and its documents stay whole: shipped files match their checksums,
nothing large is tracked outside assets/, run folders are not tracked, and every relative link in
the README and docs/ points at a file that exists."""
import hashlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 5 * 1024 * 1024
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked():
    res = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in res.stdout.decode().split("\0") if p]


def test_every_shipped_file_matches_its_checksum():
    listed = {}
    for line in (ROOT / "assets/SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    shipped = {p.relative_to(ROOT / "assets").as_posix() for p in (ROOT / "assets").rglob("*")
               if p.is_file() and p.name != "SHA256SUMS"}
    assert shipped == set(listed), "assets/SHA256SUMS must list every file under assets/"
    for name, digest in listed.items():
        assert hashlib.sha256((ROOT / "assets" / name).read_bytes()).hexdigest() == digest, name


def test_nothing_large_is_tracked_outside_assets_and_no_run_folder():
    files = tracked()
    assert [p for p in files if p.relative_to(ROOT).parts[0] == "runs"] == []
    large = [str(p.relative_to(ROOT)) for p in files
             if p.exists() and p.relative_to(ROOT).parts[0] != "assets" and p.stat().st_size > MAX_BYTES]
    assert large == []


def documents():
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "assets").glob("*/MODEL_CARD.md"))]


def anchors(doc):
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in doc.read_text().splitlines() if line.startswith("#")}


def test_every_link_in_the_docs_resolves():
    broken = []
    for doc in documents():
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = doc.parent / path if path else doc
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_readme_stays_short_and_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {Path(t.split("#")[0]).name for t in LINK.findall(readme)}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked
