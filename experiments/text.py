"""``python experiments/text.py`` is ``plastix text``; its code is
plastix/experiments/text.py."""

from plastix.experiments import script

script(__name__, "text")
