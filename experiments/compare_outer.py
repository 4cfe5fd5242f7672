"""``python experiments/compare_outer.py`` is ``plastix compare-outer``; its code is
plastix/experiments/compare_outer.py."""

from plastix.experiments import script

script(__name__, "compare-outer")
