"""The rule contract: the `Rule` tuple, the registry, coefficient initialisation and
the trace-time checks every rule shares.

A rule sees one synapse matrix ``w`` of shape ``(n_post, n_pre)`` and one example
(``pre (n_pre,)``, ``post (n_post,)``, optional ``mod``). Each coefficient is an array of
shape ``term_shape + g`` where ``g`` is ``()`` (shared), ``(n_post, 1)`` (per post
neuron) or ``(n_post, n_pre)`` (per synapse): rules index the leading term axes and let
the trailing ``g`` axes broadcast against ``w``, so one code path serves every
granularity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

GRANULARITIES = ("shared", "post", "synapse")


class Rule(NamedTuple):
    """A plasticity rule as a pair of pure functions plus its coefficient layout.

    Attributes:
        name: registry name (or a derived name such as ``"modulated(hebb)"``).
        init: ``init(w) -> state``; the rule's memory, ``()`` when it has none.
        update: ``update(coeffs, state, w, pre, post, mod=None) -> (dw, new_state)``.
        default_coeffs: coefficient name -> ``np.ndarray`` of the term shape.
        coeffs_per_synapse: total number of scalars per synapse (sum of term sizes).
    """

    name: str
    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any]]
    default_coeffs: dict[str, np.ndarray]
    coeffs_per_synapse: int


REGISTRY: dict[str, Callable[..., Rule]] = {}


def register(factory: Callable[..., Rule]) -> Callable[..., Rule]:
    """Adds ``factory`` to `REGISTRY` under its ``__name__`` and returns it unchanged."""
    if factory.__name__ in REGISTRY:
        raise ValueError(f"rule {factory.__name__!r} is registered twice")
    REGISTRY[factory.__name__] = factory
    return factory


def get(name: str, **hyper) -> Rule:
    """Builds the registered rule ``name`` with hyperparameters ``hyper``.

    Raises:
        ValueError: if ``name`` is not in `REGISTRY` (the message lists the known names).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown rule {name!r}; known rules: {sorted(REGISTRY)}")
    return REGISTRY[name](**hyper)


def granularity_shape(w_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """The trailing coefficient shape for one granularity of a ``(n_post, n_pre)`` matrix."""
    if len(w_shape) != 2:
        raise ValueError(f"w_shape must be (n_post, n_pre), got {tuple(w_shape)}")
    n_post, n_pre = w_shape
    shapes = {"shared": (), "post": (n_post, 1), "synapse": (n_post, n_pre)}
    if granularity not in shapes:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    return shapes[granularity]


def init_coeffs(rule: Rule, w_shape: tuple[int, int],
                granularity: str = "shared") -> dict[str, jnp.ndarray]:
    """The rule's default coefficients, one copy per shared / post-neuron / synapse slot.

    Each coefficient gets shape ``term_shape + g`` with ``g`` = ``()``, ``(n_post, 1)`` or
    ``(n_post, n_pre)`` for ``granularity`` = ``"shared"``, ``"post"`` or ``"synapse"``.

    Args:
        rule: the `Rule` whose ``default_coeffs`` fill the arrays.
        w_shape: ``(n_post, n_pre)``.
        granularity: ``"shared"``, ``"post"`` or ``"synapse"``.

    Returns:
        A dict of float32 arrays, ready for ``jax.flatten_util.ravel_pytree``.
    """
    g = granularity_shape(w_shape, granularity)
    return {
        key: jnp.broadcast_to(
            jnp.asarray(value, jnp.float32).reshape(value.shape + (1,) * len(g)),
            value.shape + g)
        for key, value in rule.default_coeffs.items()
    }


def make_rule(name: str, update: Callable, default_coeffs: Mapping[str, Any],
              init: Callable | None = None) -> Rule:
    """Wraps a raw update with the shared trace-time checks and builds the `Rule`.

    The wrapped update validates ``w``, ``pre``, ``post``, ``mod`` and every coefficient
    shape (shapes are static, so this costs nothing after tracing) and casts ``dw`` to
    ``w.dtype``.
    """
    defaults = {k: np.asarray(v, np.float32) for k, v in default_coeffs.items()}

    def checked_update(coeffs, state, w, pre, post, mod=None):
        check_inputs(name, w, pre, post, mod)
        check_coeffs(name, defaults, coeffs, w.shape)
        dw, new_state = update(coeffs, state, w, pre, post, mod)
        return dw.astype(w.dtype), new_state

    return Rule(name=name,
                init=init if init is not None else _no_state,
                update=checked_update,
                default_coeffs=defaults,
                coeffs_per_synapse=int(sum(v.size for v in defaults.values())))


def _no_state(w):
    del w
    return ()


def check_inputs(name: str, w, pre, post, mod) -> None:
    """Raises ValueError unless ``w``, ``pre``, ``post`` and ``mod`` have matching shapes.

    ``w (n_post, n_pre)``, ``pre (n_pre,)``, ``post (n_post,)``; ``mod`` None, a scalar,
    ``(n_post,)``, or a tuple of arrays that the rule reading it checks itself.
    """
    w_shape = jnp.shape(w)
    if len(w_shape) != 2:
        raise ValueError(f"rule {name!r}: w must be (n_post, n_pre), got shape {w_shape}")
    n_post, n_pre = w_shape
    if jnp.shape(pre) != (n_pre,) or jnp.shape(post) != (n_post,):
        raise ValueError(
            f"rule {name!r}: pre {jnp.shape(pre)} and post {jnp.shape(post)} do not match "
            f"w {w_shape}; expected pre ({n_pre},) and post ({n_post},)")
    # Tuples (e.g. chl's PlusPhase) are checked by the rule that reads them.
    if mod is not None and not isinstance(mod, tuple) and jnp.shape(mod) not in ((), (n_post,)):
        raise ValueError(
            f"rule {name!r}: mod must be a scalar or ({n_post},) for w {w_shape}, "
            f"got shape {jnp.shape(mod)}")


def check_coeffs(name: str, defaults: Mapping[str, np.ndarray], coeffs,
                 w_shape: tuple[int, int]) -> None:
    """Raises ValueError unless ``coeffs`` has the rule's keys and shapes.

    Each coefficient must be ``term_shape + g`` with ``g`` one of ``()``,
    ``(n_post, 1)``, ``(n_post, n_pre)`` for ``w_shape``.
    """
    if not isinstance(coeffs, Mapping) or set(coeffs) != set(defaults):
        got = sorted(coeffs) if isinstance(coeffs, Mapping) else type(coeffs).__name__
        raise ValueError(f"rule {name!r}: coeffs must have keys {sorted(defaults)}, got {got}")
    allowed = [granularity_shape(w_shape, g) for g in GRANULARITIES]
    for key, default in defaults.items():
        term, shape = default.shape, jnp.shape(coeffs[key])
        if shape[:len(term)] != term or shape[len(term):] not in allowed:
            raise ValueError(
                f"rule {name!r}: coefficient {key!r} has shape {shape}; for w {tuple(w_shape)} "
                f"expected {term} + one of {allowed}")


def require_mod(name: str, mod, what: str):
    """Returns ``mod`` or raises ValueError saying what the rule reads from it."""
    if mod is None:
        raise ValueError(f"rule {name!r} needs mod ({what}), got None")
    return mod


def as_column(x):
    """A scalar unchanged, an ``(n_post,)`` vector as ``(n_post, 1)``: one factor per row.

    So that a per-neuron signal scales the rows (post neurons) of a ``(n_post, n_pre)``
    matrix.
    """
    x = jnp.asarray(x)
    return x[:, None] if x.ndim == 1 else x


def outer(post, pre):
    """``post pre^T``: the ``(n_post, n_pre)`` co-activity matrix, laid out like ``w``."""
    return post[:, None] * pre[None, :]
