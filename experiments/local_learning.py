"""``python experiments/local_learning.py`` is ``plastix local-learning``; its code is
plastix/experiments/local_learning.py."""

from plastix.experiments import script

script(__name__, "local-learning")
