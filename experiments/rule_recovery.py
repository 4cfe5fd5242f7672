"""``python experiments/rule_recovery.py`` is ``plastix rule-recovery``; its code is
plastix/experiments/rule_recovery.py."""

from plastix.experiments import script

script(__name__, "rule-recovery")
