"""``python experiments/pattern_completion.py`` is ``plastix pattern-completion``; its code is
plastix/experiments/pattern_completion.py."""

from plastix.experiments import script

script(__name__, "pattern-completion")
