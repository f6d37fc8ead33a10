"""Issue 16: the README and the napari hub files work where they are shown
(PyPI, the hub): absolute links that point at files of this repository, the
biologist part first, and menu paths that napari really has."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", ROOT / ".napari-hub" / "DESCRIPTION.md"]
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
MENU = re.compile(r"\*Layers > (\w+) > ([^*]+?)\*")


def _source() -> str:
    # [project.urls] Source (no tomllib: the package supports Python 3.10)
    m = re.search(r'^Source = "https://github\.com/([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    return m.group(1)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_are_absolute_and_point_at_repository_files(page):
    repo = _source()
    raw = f"https://raw.githubusercontent.com/{repo}/main/"
    tree = re.compile(rf"https://github\.com/{re.escape(repo)}/(?:blob|tree)/main/(.+)")
    links = LINK.findall(page.read_text())
    images = [u for bang, u in links if bang]
    assert images, "no screenshot"
    for url in images:
        assert url.startswith(raw), url  # relative images break on PyPI and the hub
        assert (ROOT / url.removeprefix(raw)).is_file(), url
    for _, url in links:
        assert url.startswith(("https://", "#")), url
        m = tree.match(url)
        if m:
            path, _, anchor = m.group(1).partition("#")
            assert (ROOT / path).exists(), url
            if anchor:  # GitHub's heading slugs
                heads = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}
                assert anchor in slugs, url


def test_readme_starts_with_the_biologist():
    text = (ROOT / "README.md").read_text()
    heads = [h for h in re.findall(r"^## (.+)$", text, re.M)]
    assert heads.index("Install") < heads.index("First steps: try a workflow on its sample") < heads.index(
        "For developers")
    install = text.split("## Install", 1)[1]
    block = re.search(r"```bash\n(.*?)```", install, re.S).group(1)
    assert block.split() == ["pip", "install", '"napari-expertloop[qt]"', "napari"]  # two commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_menu_paths_named_in_the_page_exist_in_the_manifest(page):
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    contrib = manifest["contributions"]
    name_of = {w["command"]: w["display_name"] for w in contrib["widgets"]}
    menus = {m.removeprefix("napari/layers/"): {name_of[i["command"]] for i in items}
             for m, items in contrib["menus"].items() if m.startswith("napari/layers/")}
    named = MENU.findall(page.read_text())
    assert len(named) >= 6
    for menu, widget in named:
        assert widget in menus.get(menu.lower(), set()), (menu, widget)


def test_hub_config_and_description():
    cfg = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert cfg["labels"]["ontology"].startswith("EDAM-BIOIMAGING")
    assert len(cfg["labels"]["terms"]) >= 5
    desc = (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()
    for head in ("## Summary", "## Intended audience and supported data", "## Quick start", "## Getting help",
                 "## How to cite"):
        assert head in desc, head
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    assert "Acquisition" not in manifest["categories"]
    # every sample the hub page promises is in the manifest
    keys = {s["display_name"].split(":")[0].strip().lower() for s in manifest["contributions"]["sample_data"]}
    for word in ("spots", "membranes", "flim", "blood"):
        assert word in keys, word
