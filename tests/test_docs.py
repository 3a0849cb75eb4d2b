"""The README and docs/ as a newcomer meets them (issue 22): a front door under 10,000
characters that links a page per task, links that lead somewhere, and examples that run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from lookalike.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"),
                                           re.M)}


def test_the_readme_is_a_front_door_with_a_page_per_task():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= 10_000, len(text)
    for page in ("shop-photos", "databricks", "rest", "configuration", "pipeline", "models"):
        assert f"](docs/{page}.md" in text, page
    assert "](BENCHMARKS.md" in text and "make demo" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not followed (loopback only)
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: {target}"


def test_yaml_examples_of_settings_are_valid_settings():
    """Every YAML example in the docs whose keys are settings sections loads as settings."""
    sections = {f.name for f in dataclasses.fields(Settings)}
    checked = 0
    for page in PAGES:
        for language, block in FENCE.findall(page.read_text(encoding="utf-8")):
            if language != "yaml":
                continue
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and set(data) <= sections:
                load_settings(overrides=data)
                checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_the_readmes_curl_example_answers(served_model):
    """The README's query, sent as its curl sends it, to a real served model (whose catalogue
    holds the product it names)."""
    from lookalike.serving.server import post_json

    text = README.read_text(encoding="utf-8")
    command = re.search(r"curl -s (\S+) .*?-d '(\{.*?\})'", text, re.S)
    assert command and command.group(1) == "http://127.0.0.1:5001/invocations"
    body = json.loads(command.group(2))
    status, answer = post_json(f"{served_model}/invocations", body)
    assert status == 200, answer
    assert len(answer["predictions"]) == body["params"]["k"]
