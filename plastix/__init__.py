"""plastix: synaptic plasticity rules, plastic networks and evolution strategies in JAX.

The subpackages load on first use (``import plastix; plastix.rules.get("oja")``), so
``import plastix`` itself stays cheap.
"""

from importlib import import_module as _import_module
from pkgutil import iter_modules as _iter_modules

__version__ = "0.1.0"

# Found on disk rather than listed, so a module added to the package is reachable too.
_SUBMODULES = tuple(sorted(m.name for m in _iter_modules(__path__) if not m.name.startswith("_")))

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    # Called only for names not yet set: importing a submodule binds it on the package.
    if name in _SUBMODULES:
        return _import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
