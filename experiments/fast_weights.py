"""``python experiments/fast_weights.py`` is ``plastix fast-weights``; its code is
plastix/experiments/fast_weights.py."""

from plastix.experiments import script

script(__name__, "fast-weights")
