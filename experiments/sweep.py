"""``python experiments/sweep.py`` is ``plastix sweep``; its code is
plastix/experiments/sweep.py."""

from plastix.experiments import script

script(__name__, "sweep")
