"""``python experiments/hebbian_masks.py`` is ``plastix hebbian-masks``; its code is
plastix/experiments/hebbian_masks.py."""

from plastix.experiments import script

script(__name__, "hebbian-masks")
