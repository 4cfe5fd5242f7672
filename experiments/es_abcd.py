"""``python experiments/es_abcd.py`` is ``plastix evolve``; its code is
plastix/experiments/es_abcd.py."""

from plastix.experiments import script

script(__name__, "evolve")
