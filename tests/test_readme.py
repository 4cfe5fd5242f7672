"""The Python blocks of README.md and of the documentation pages run as written.

Each page's ```python blocks run in order in one fresh interpreter (a reader following the
page), in a temporary working directory, with the repository root importable. A block
right after a line ``<!-- no-run -->`` is left out, and so are the interface listings of
docs/CONTRACTS.md. Shell blocks are not run here: the
experiments' own tests run their commands.

README.md is in the default tier (its example is sized to run in seconds); the guide pages
are in the second tier (``-m slow``), as each compiles a network or two.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_RUN = "<!-- no-run -->"
# Pages whose Python blocks are interface listings (signatures and comments), not programs.
LISTINGS = {os.path.join("docs", "CONTRACTS.md")}
# A fenced block at the start of a line: its opening fence, language and body.
FENCE = re.compile(r"^(?P<fence>```+)(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python blocks of a Markdown text, in order, less the ones
    marked ``<!-- no-run -->`` on the line before."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang").strip() != "python":
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() != NO_RUN:
            blocks.append(match.group("body"))
    return blocks


def pages_with_python() -> list[str]:
    pages = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]
    return [page for page in pages if page not in LISTINGS and python_blocks(_read(page))]


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def test_blocks_are_found_and_no_run_is_honoured():
    text = ("intro\n```python\na = 1\n```\n\n```bash\nls\n```\n<!-- no-run -->\n"
            "```python\nraise SystemExit(1)\n```\n````python\nb = '```'\n````\n")
    assert python_blocks(text) == ["a = 1\n", "b = '```'\n"]
    assert python_blocks(_read("README.md")), "README.md has no Python example"


@pytest.mark.parametrize("page", [
    page if page == "README.md" else pytest.param(page, marks=pytest.mark.slow)
    for page in pages_with_python()])
def test_python_blocks_run(page, tmp_path):
    script = "\n".join(python_blocks(_read(page)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page}: its Python blocks failed:\n{done.stderr[-3000:]}"
