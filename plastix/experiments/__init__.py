"""The experiments, as commands of the ``plastix`` program that installing plastix puts
on the PATH (``plastix evolve --help``; also ``python -m plastix evolve --help``).

Each command is a module of this package with a ``main(argv)``; in a checkout,
``python experiments/<module>.py`` runs the same code (`script`). Importing this package
imports no experiment: a command's module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import NamedTuple

from plastix import cli, devices


class Command(NamedTuple):
    """A ``plastix`` command: the module that runs it and what it does.

    ``distributed``: it may run over several processes (--coordinator), so
    ``jax.distributed`` starts before its module is imported (importing starts JAX).
    """

    module: str
    summary: str
    distributed: bool = False


COMMANDS = {
    "evolve": Command("es_abcd", "evolve a plasticity rule for in-lifetime prediction, or "
                                 "learn it by gradient"),
    "sweep": Command("sweep", "a grid of evolve runs, as few compiled programs as its "
                              "shapes allow", distributed=True),
    "text": Command("text", "plastic RNNs that learn text within a lifetime, against "
                            "n-grams and backprop"),
    "fast-weights": Command("fast_weights", "fast weights against RNN baselines (Ba et al. "
                                            "2016)"),
    "compare-outer": Command("compare_outer", "ES against gradient descent through the "
                                              "lifetime, at equal wall-clock time"),
    "hebbian-masks": Command("hebbian_masks", "Hebbian pruning masks on the readouts of "
                                              "gradient-trained models"),
    "local-learning": Command("local_learning", "CHL, GeneRec and the trace rule against "
                                                "backprop"),
    "pattern-completion": Command("pattern_completion", "pattern completion with "
                                                        "differentiable plasticity"),
    "rule-recovery": Command("rule_recovery", "recover a plasticity rule from noisy "
                                              "recordings of the weights it shaped"),
}


def load(command: str, argv: list[str] = ()) -> ModuleType:
    """The module of ``command``, imported (after starting ``jax.distributed`` from
    ``argv`` for a distributed command)."""
    spec = COMMANDS[command]
    if spec.distributed:
        devices.use_all_cpu_cores()
        devices.start_distributed(list(argv))
    return importlib.import_module(f"{__name__}.{spec.module}")


def parser() -> cli.Parser:
    listing = "\n".join(f"  {name:<20}{spec.summary}" for name, spec in COMMANDS.items())
    p = cli.Parser(prog="plastix", description=__doc__.split("\n\n")[0],
                   epilog=f"commands:\n{listing}\n\nplastix COMMAND --help lists a "
                          f"command's flags.")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                   help="the experiment to run (below)")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="the command's flags")
    return p


def main(argv: list[str] | None = None) -> None:
    """``plastix COMMAND [flags]``: run the experiment ``COMMAND`` with its flags."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    module = load(args.command, args.flags)
    # argparse names a program after sys.argv[0]: the command's --help and errors then
    # say `plastix evolve`, not the name of the file that started it.
    sys.argv[0] = f"plastix {args.command}"
    cli.run(module.main, args.flags)


def script(name: str, command: str) -> None:
    """What ``experiments/<module>.py`` of a checkout does: run as a program
    (``name == "__main__"``) it runs ``plastix <command>``, under its own file name;
    imported from beside it (``import es_abcd``, as the tests and benchmarks do) it is the
    command's module itself, so that setting an attribute on it reaches the code."""
    if name == "__main__":
        cli.run(load(command, sys.argv[1:]).main)
    else:
        sys.modules[name] = load(command)
