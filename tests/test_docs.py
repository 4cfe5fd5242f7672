"""The API reference covers every public module: each has a page that renders it."""

import glob
import os
import pkgutil
import re

import plastix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Command-line programs (their guides document them) and the package's data.
NOT_API = ("plastix.experiments", "plastix.__main__", "plastix.data")


def public_modules() -> set[str]:
    names = {"plastix"}
    for module in pkgutil.walk_packages(plastix.__path__, "plastix."):
        name = module.name
        if name.startswith(NOT_API) or any(part.startswith("_") for part in name.split(".")):
            continue
        names.add(name)
    return names


def test_every_public_module_has_an_api_page():
    rendered = set()
    for page in glob.glob(os.path.join(ROOT, "docs", "api", "**", "*.md"), recursive=True):
        with open(page, encoding="utf-8") as f:
            rendered |= set(re.findall(r"^::: (plastix[\w.]*)", f.read(), re.MULTILINE))
    assert public_modules() - rendered == set()
    assert {"plastix.network", "plastix.plastic", "plastix.rules.hebbian"} <= rendered
