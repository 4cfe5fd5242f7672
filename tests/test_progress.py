"""plastix.progress: a bar with an ETA on a terminal, the loop's own lines alone elsewhere."""

import io
import sys

from plastix import progress, runs


class Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def count_to(total: int, on_log) -> None:
    """`runs.run_blocks` over an integer state, in blocks of 2, each logged by ``on_log``."""
    runs.run_blocks(0, total, lambda state, first, count: (state + count,
                                                           {"step": first + count}),
                    log_every=2, on_log=on_log)


def test_elsewhere_the_output_is_the_lines_alone(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    count_to(4, lambda r: print(f"step {r['step']}"))
    assert out.getvalue() == "step 2\nstep 4\n"


def test_on_a_terminal_a_bar_with_an_eta_runs_under_the_lines(monkeypatch):
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    count_to(4, lambda r: print(f"step {r['step']}"))
    shown = out.getvalue()
    assert "step 2\n" in shown and "step 4\n" in shown
    assert "2/4 [" in shown and "<" in shown  # done/total [elapsed<remaining ...]


def test_a_bar_counts_from_where_a_run_resumed(monkeypatch):
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    with progress.bar(10, initial=6, unit="generation", desc="run") as bar:
        assert "run:  60%" in out.getvalue() and "6/10 [" in out.getvalue()
        bar.update(2)
        with bar.above():  # a line printed redraws the bar under it
            print("generation 8")
    assert "generation 8\n" in out.getvalue() and "8/10 [" in out.getvalue()
