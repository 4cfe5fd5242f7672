"""``python -m plastix COMMAND [flags]``: the ``plastix`` program (`plastix.experiments`)."""

from plastix.experiments import main

main()
