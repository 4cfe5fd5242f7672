"""A progress bar with an ETA for the long loops (ES generations, gradient updates,
training steps, sweep cells), shown only where someone watches: on a terminal.

When stdout is a terminal a tqdm bar stays under the loop's own lines; written to a
file, a pipe or a test's capture, the output is the loop's lines alone, exactly as
without a bar. ``TQDM_DISABLE=1`` hides the bar on a terminal too.

    with progress.bar(total, initial=first_step, unit="generation", desc=name) as bar:
        for ...:
            bar.update(steps_done)
            with bar.above():       # lines printed here go above the bar
                print(line)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import tqdm


class Bar:
    """The bar of one loop (a tqdm bar, or nothing where stdout is not a terminal)."""

    def __init__(self, bar: tqdm.tqdm | None):
        self._bar = bar

    def update(self, n: int) -> None:
        """Count ``n`` more steps done."""
        if self._bar is not None:
            self._bar.update(n)

    def above(self) -> contextlib.AbstractContextManager:
        """A context in which printing to stdout goes above the bar, not through it."""
        if self._bar is None:
            return contextlib.nullcontext()
        return tqdm.tqdm.external_write_mode(file=sys.stdout)


@contextlib.contextmanager
def bar(total: int | None, initial: int = 0, unit: str = "step",
        desc: str | None = None) -> Iterator[Bar]:
    """A `Bar` over ``total`` steps (None: unknown, no ETA) that starts at ``initial`` (a
    resumed run's step, left out of the rate and ETA), closed and cleared at the end."""
    if not sys.stdout.isatty():
        yield Bar(None)
        return
    shown = tqdm.tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stdout,
                      leave=False, dynamic_ncols=True)
    try:
        yield Bar(shown)
    finally:
        shown.close()
