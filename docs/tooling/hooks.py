"""MkDocs hook: the figures the experiments committed, published where they are.

Each PNG under ``experiments/results`` and ``benchmarks/results`` joins the site as
``figures/<its path in the repository>``, so the results pages show the figures the
experiments wrote without a copy of them under ``docs/``.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("experiments/results", "benchmarks/results")


def on_files(files, config):
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.png")):
            uri = f"figures/{path.relative_to(ROOT).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
