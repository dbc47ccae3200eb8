"""The docs: every relative link in the README and docs/ resolves, the site's front page is the README,
and the static site builds with mkdocs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == [], broken
    assert any(LINK.findall((ROOT / "README.md").read_text()))  # the README links its docs


def test_the_site_front_page_is_the_readme_and_the_readme_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "index.md").read_text() == readme.replace("](docs/", "](")
    assert len(readme.splitlines()) < 200
    assert re.search(r"(?m)^## Quick start", readme) and "make train" in readme and "make test" in readme


def test_mkdocs_builds_the_site(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.fail("mkdocs is missing: it is in the test extra (pip install -e '.[test]')")
    done = subprocess.run([mkdocs, "build", "--quiet", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()
