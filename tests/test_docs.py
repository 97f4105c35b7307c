"""The documentation: the docs site (mkdocs.yml, docs/) builds with warnings as errors, the API reference
page is generated from the public functions' docstrings, and every relative link of the top-level Markdown
files (README, CHANGELOG, CONTRIBUTING) names a file that exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=240, cwd=project)


def relative_links(markdown: str) -> list[str]:
    """Link targets that point into the repository: not URLs, not mail, not in-page anchors."""
    targets = [m[1] for m in LINK.finditer(markdown)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path):
    out = mkdocs_build(REPO, tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # mkdocstrings rendered the docstrings themselves, not only the page's headings
    for text in ("Rank map and packed masks of a batch of scores", "DiffROAR of", "Scores of"):
        assert text in api, text
    for page in ("install", "cli", "your-method", "python-api", "datasets", "replicate", "cluster",
                 "reliability", "design", "benchmarks", "leakage"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


@pytest.mark.parametrize("link, named", [("missing.md", "missing.md"), ("other.md#no-such-heading", "no-such-heading")])
def test_a_broken_link_fails_the_strict_build(tmp_path, link, named):
    """The check above can fail: under the repository's validation settings, a page linking to a missing
    page or to a missing heading of another page stops `mkdocs build --strict`."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Home\n\nSee [there]({link}).\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading\n")
    validation = yaml.safe_load((REPO / "mkdocs.yml").read_text())["validation"]
    config = {"site_name": "t", "docs_dir": "docs", "theme": {"name": "mkdocs"}, "validation": validation}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    out = mkdocs_build(tmp_path, tmp_path / "site")
    assert out.returncode != 0 and named in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_relative_link_of_a_top_level_page_names_a_file(name):
    text = (REPO / name).read_text()
    links = relative_links(text)
    assert links, f"{name} links to no page"
    missing = [t for t in links if not (REPO / t.split("#", 1)[0]).exists()]
    assert not missing, f"{name} links to missing files: {missing}"


def test_the_link_finder_sees_links_and_skips_urls_and_anchors():
    text = "[a](docs/a.md) ![b](docs/b.png) [c](https://x.org/c.md) [d](#anchor) [e](docs/e.md#part)"
    assert relative_links(text) == ["docs/a.md", "docs/b.png", "docs/e.md#part"]


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
