"""plastix: synaptic plasticity rules, plastic networks and evolution strategies in JAX."""

__version__ = "0.1.0"
