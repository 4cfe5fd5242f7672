"""The rule contract: the `Rule` tuple, the registry, coefficient initialisation and
the trace-time checks every rule shares.

A rule sees one synapse matrix ``w`` of shape ``(n_post, n_pre)`` and one example
(``pre (n_pre,)``, ``post (n_post,)``, optional ``mod``). Each coefficient is an array of
shape ``term_shape + g`` where ``g`` is ``()`` (shared), ``(n_post, 1)`` (per post
neuron) or ``(n_post, n_pre)`` (per synapse): rules index the leading term axes and let
the trailing ``g`` axes broadcast against ``w``, so one code path serves every
granularity.

A `Rule` is a value: hashable and comparable, so it can sit in a frozen network
configuration and be a static argument of ``jax.jit``. `get` returns the same `Rule`
for the same name and hyperparameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from plastix import checks

GRANULARITIES = ("shared", "post", "synapse")


class Coefficients(Mapping):
    """A read-only mapping coefficient name -> float32 ``np.ndarray`` of its term shape.

    Equal (and hashing equal) when the names, shapes and values are; so a `Rule` holding
    it is hashable. The arrays are private copies marked read-only, so neither the
    caller's arrays nor later writes can change a hash.
    """

    __slots__ = ("_values", "_hash")

    def __init__(self, values: Mapping[str, Any] = ()):
        frozen = {}
        for key, value in dict(values).items():
            # + 0 copies, and turns -0.0 into 0.0, which compares equal and must hash equal.
            array = np.asarray(value, np.float32) + np.float32(0.0)
            array.setflags(write=False)
            frozen[str(key)] = array
        self._values = frozen
        self._hash = hash(tuple((k, v.shape, v.tobytes()) for k, v in sorted(frozen.items())))

    def __getitem__(self, key: str) -> np.ndarray:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if set(self) != set(other):
            return False
        for key, value in self._values.items():
            theirs = np.asarray(other[key])
            if theirs.shape != value.shape or not np.array_equal(theirs, value):
                return False
        return True

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k!r}: {str(v) if v.ndim == 0 else f'<array {v.shape}>'}"
            for k, v in self._values.items())
        return f"Coefficients({{{shown}}})"


class OuterAffine(NamedTuple):
    """The factors of an update ``dw = (a y + b) x^T + (c y + d)`` (x = pre, y = post).

    Each of ``a``, ``b``, ``c``, ``d`` broadcasts against ``w (n_post, n_pre)`` (shape
    ``()``, ``(n_post, 1)`` or ``(n_post, n_pre)``), learning rate included; an absent
    term is ``None`` so that callers skip it at trace time instead of adding zeros.
    """

    a: Any
    b: Any
    c: Any
    d: Any


class Rule(NamedTuple):
    """A plasticity rule as a pair of pure functions plus its coefficient layout.

    Hashable and comparable (every field is), so a `Rule` can live in a frozen config.

    Attributes:
        name: registry name (or a derived name such as ``"modulated(hebb)"``).
        init: ``init(w) -> state``; the rule's memory, ``()`` when it has none.
        update: ``update(coeffs, state, w, pre, post, mod=None) -> (dw, new_state)``.
        default_coeffs: `Coefficients`, name -> ``np.ndarray`` of the term shape.
        coeffs_per_synapse: total number of scalars per synapse (sum of term sizes).
        reads_target: the rule is error-driven: its ``post`` must be the layer's own
            output and its ``mod``, if read, the target (delta, chl, generec,
            err_credit, polynomial with ``use_mod``). A readout under such a rule sees
            its prediction as post and the teacher as mod.
        effective_weights: ``effective_weights(w, state) -> w_eff``, the weights the
            forward pass must use (e.g. ``w * mask``); ``None`` means ``w`` itself.
        outer_affine: for rules whose update is exactly
            ``dw = (a y + b) x^T + (c y + d)``, ``outer_affine(coeffs) -> OuterAffine``
            with the learning rate folded in; ``None`` for every other rule.
    """

    name: str
    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any]]
    default_coeffs: Coefficients
    coeffs_per_synapse: int
    reads_target: bool = False
    effective_weights: Callable[[Any, Any], Any] | None = None
    outer_affine: Callable[[Mapping[str, Any]], OuterAffine] | None = None


REGISTRY: dict[str, Callable[..., Rule]] = {}

# Rule transformers a name may apply, ``"modulated(oja)"``: name -> ``f(rule, *numbers)``.
WRAPPERS: dict[str, Callable[..., Rule]] = {}

# (name, factory, sorted hyperparameters) -> Rule: equal `get` calls return one value.
_RULE_CACHE: dict[tuple, Rule] = {}

# How deep a name's wrappers may nest (``annealed(modulated(hebb))`` is 2): a deeper one
# is a mistake, and past Python's recursion limit it would fail without saying why.
MAX_NESTING = 16


def register(factory: Callable[..., Rule], name: str | None = None) -> Callable[..., Rule]:
    """Adds ``factory`` to `REGISTRY` under ``name`` (default its ``__name__``).

    Registering a name again replaces the factory, so a notebook cell that defines a
    rule can be re-run; `get` then builds from the new factory. Rules already built
    under other names stay cached, so configs holding them keep comparing equal.
    Returns ``factory`` unchanged (usable as a decorator).
    """
    name = factory.__name__ if name is None else name
    REGISTRY[name] = factory
    for key in [key for key in _RULE_CACHE if key[0] == name]:
        del _RULE_CACHE[key]
    return factory


def get(name: str, **hyper) -> Rule:
    """Builds the registered rule ``name`` with hyperparameters ``hyper``.

    ``name`` may carry numeric hyperparameters, ``"rls(alpha=0.1)"``, or apply a wrapper,
    ``"modulated(oja)"``. Equal calls return the same `Rule` (cached until ``name`` is
    registered again), so two ``get("oja")`` compare and hash equal and a jitted function
    taking the rule as a static argument compiles once.

    Raises:
        ValueError: if ``name`` is not in `REGISTRY` (the message lists the known names),
            is malformed or nested deeper than `MAX_NESTING`, names a hyperparameter its
            factory does not take, or gives a wrapper or factory arguments its signature
            does not (the message shows the signature).
    """
    _check_name(name)
    with_hyper = _parse_hyperparameters(name)
    if with_hyper is not None:
        base, given = with_hyper
        given.update(hyper)
        known = inspect.signature(REGISTRY[base]).parameters
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"rule name {name!r}: {base} has no hyperparameter "
                             f"{', '.join(unknown)}; it takes {sorted(known) or 'none'}")
        # Named by its hyperparameters, so that the rule's name builds it back.
        canonical = f"{base}({', '.join(f'{k}={v!r}' for k, v in sorted(given.items()))})"
        key = (canonical, REGISTRY[base], ())
        if key not in _RULE_CACHE:
            _RULE_CACHE[key] = get(base, **given)._replace(name=canonical)
        return _RULE_CACHE[key]
    wrapped = _parse_wrapped(name)
    if wrapped is not None:
        wrapper, inner, args = wrapped
        try:
            inspect.signature(WRAPPERS[wrapper]).bind(None, *args)
        except TypeError:
            raise ValueError(f"rule name {name!r}: {len(args)} number(s) after the rule; "
                             f"expected {signature_text(wrapper, WRAPPERS[wrapper])}") from None
        key = (name, WRAPPERS[wrapper], tuple(sorted(hyper.items())))
        if key not in _RULE_CACHE:
            _RULE_CACHE[key] = WRAPPERS[wrapper](get(inner, **hyper), *args)
        return _RULE_CACHE[key]
    if name not in REGISTRY:
        raise ValueError(f"unknown rule {name!r}; known rules: {sorted(REGISTRY)} "
                         f"(or {' / '.join(f'{w}(<rule>)' for w in sorted(WRAPPERS))})")
    factory = REGISTRY[name]
    _check_hyperparameters(name, factory, hyper)
    key = (name, factory, tuple(sorted(hyper.items())))
    try:
        hash(key)
    except TypeError:  # an unhashable hyperparameter: build without caching
        return factory(**hyper)
    if key not in _RULE_CACHE:
        _RULE_CACHE[key] = factory(**hyper)
    return _RULE_CACHE[key]


def _check_name(name) -> None:
    """Refuse a name that is not a string or whose wrappers nest past `MAX_NESTING`."""
    if not isinstance(name, str):
        raise ValueError(f"a rule name must be a string, got {name!r}")
    depth = deepest = 0
    for char in name:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise ValueError(f"rule name {name[:40]!r}...: nested {deepest} deep, more than "
                         f"{MAX_NESTING}")


def signature_text(head: str, factory: Callable) -> str:
    """``head``'s call as a user writes it: ``krotov(p: float = 2.0, k: int = 2, ...)``,
    a wrapper's rule as ``<rule>``."""
    parts = []
    for i, p in enumerate(inspect.signature(factory).parameters.values()):
        annotation = "" if p.annotation is p.empty else f": {p.annotation}".replace("'", "")
        if head in WRAPPERS and i == 0:
            parts.append("<rule>")
        elif p.default is p.empty:
            parts.append(f"{p.name}{annotation}")
        else:
            parts.append(f"{p.name}{annotation} = {p.default!r}")
    return f"{head}({', '.join(parts)})"


def _check_hyperparameters(name: str, factory: Callable, hyper: Mapping[str, Any]) -> None:
    """Refuse hyperparameters that ``factory``'s signature does not take, or a plain number
    of the wrong kind for its annotation: a fraction for an ``int``, anything but 0 or 1
    for a ``bool``, text for a number."""
    params = inspect.signature(factory).parameters
    try:
        inspect.signature(factory).bind(**hyper)
    except TypeError:
        raise ValueError(f"rule {name!r}: hyperparameters {sorted(hyper)} do not fit "
                         f"{signature_text(name, factory)}") from None
    for key, value in hyper.items():
        kind = str(params[key].annotation).strip("'")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        wrong = (kind == "int" and number and not float(value).is_integer()
                 or kind == "bool" and number and value not in (0, 1)
                 or kind in ("int", "float") and isinstance(value, str))
        if wrong:
            raise ValueError(f"rule {name!r}: {key} must be {'an' if kind == 'int' else 'a'} "
                             f"{kind}, got {value!r}; expected {signature_text(name, factory)}")


def _parse_wrapped(name: str) -> tuple[str, str, tuple[float, ...]] | None:
    """``(wrapper, inner rule name, numeric args)`` of a name ``wrapper(inner[, x, ...])``
    such as ``"modulated(oja)"`` or ``"modulated(hebb, 0.9)"``; None for a plain name."""
    call = _call_parts(name, WRAPPERS, "(<rule>[, <number>...])")
    if call is None:
        return None
    head, (inner, *args) = call
    try:
        numbers = tuple(float(arg) for arg in args)
    except ValueError:
        raise ValueError(f"rule name {name!r}: {head}'s arguments after the rule must be "
                         f"numbers, got {args}") from None
    return head, inner, numbers


def _parse_hyperparameters(name: str) -> tuple[str, dict[str, float]] | None:
    """``(registry name, {hyperparameter: number})`` of a name such as
    ``"rls(alpha=0.1)"``, so that a command line or a saved config can name a rule built
    with other hyperparameters; None for any other name."""
    call = _call_parts(name, REGISTRY, "(<name>=<number>, ...)")
    if call is None:
        return None
    head, parts = call
    given = {}
    for part in parts:
        key, equals, value = (x.strip() for x in part.partition("="))
        try:
            given[key] = int(value) if value.lstrip("+-").isdigit() else float(value)
        except ValueError:
            equals = ""
        if not equals or not key.isidentifier():
            raise ValueError(f"rule name {name!r}: expected {head}(<name>=<number>, ...), "
                             f"got {part!r}")
    return head, given


def _call_parts(name: str, heads: Mapping, form: str) -> tuple[str, list[str]] | None:
    """``(head, [argument, ...])`` of a name ``head(arg, ...)`` whose head is in ``heads``;
    None for any other name. ValueError, naming the expected ``head<form>``, when the
    closing parenthesis is missing."""
    head, paren, rest = name.partition("(")
    if not paren or head not in heads:
        return None
    if not rest.endswith(")"):
        raise ValueError(f"rule name {name!r}: expected {head}{form}")
    return head, _top_level_parts(rest[:-1])


def _top_level_parts(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses, so that a wrapped rule may itself
    be a wrapper with arguments: ``"annealed(modulated(hebb, 0.9))"``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


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
              init: Callable | None = None, *, reads_target: bool = False,
              effective_weights: Callable | None = None,
              outer_affine: Callable | None = None) -> Rule:
    """Wraps a raw update with the shared trace-time checks and builds the `Rule`.

    The wrapped update validates ``w``, ``pre``, ``post``, ``mod`` and every coefficient
    shape (shapes are static, so this costs nothing after tracing) and casts ``dw`` to
    ``w.dtype``. A given ``outer_affine`` is wrapped to check the coefficient names,
    since a missing name would otherwise silently drop its term.

    Args:
        name: the rule's name, used in every error message.
        update: ``update(coeffs, state, w, pre, post, mod) -> (dw, new_state)``.
        default_coeffs: coefficient name -> value of the term shape.
        init: ``init(w) -> state``; ``None`` for a rule without memory.
        reads_target, effective_weights, outer_affine: see `Rule`.
    """
    defaults = Coefficients(default_coeffs)

    def checked_update(coeffs, state, w, pre, post, mod=None):
        check_inputs(name, w, pre, post, mod)
        check_coeffs(name, defaults, coeffs, w.shape)
        dw, new_state = update(coeffs, state, w, pre, post, mod)
        return dw.astype(w.dtype), new_state

    checked_outer_affine = None
    if outer_affine is not None:
        def checked_outer_affine(coeffs):
            check_coeff_names(name, defaults, coeffs)
            return outer_affine(coeffs)

    return Rule(name=name,
                init=init if init is not None else _no_state,
                update=checked_update,
                default_coeffs=defaults,
                coeffs_per_synapse=int(sum(v.size for v in defaults.values())),
                reads_target=bool(reads_target),
                effective_weights=effective_weights,
                outer_affine=checked_outer_affine)


def _no_state(w):
    del w
    return ()


def check_inputs(name: str, w, pre, post, mod) -> None:
    """Raises ValueError unless ``w``, ``pre``, ``post`` and ``mod`` have matching shapes
    and ``w`` is floating point.

    ``w (n_post, n_pre)``, ``pre (n_pre,)``, ``post (n_post,)``; ``mod`` None, a scalar,
    ``(n_post,)``, or a tuple of arrays that the rule reading it checks itself.
    """
    # dw is returned in w's dtype: integer weights would round every update to 0.
    if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
        raise ValueError(f"rule {name!r}: w must be floating point, got {jnp.result_type(w)} "
                         f"(an integer w would round every update to 0)")
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
    check_coeff_names(name, defaults, coeffs)
    allowed = [granularity_shape(w_shape, g) for g in GRANULARITIES]
    for key, default in defaults.items():
        term, shape = default.shape, jnp.shape(coeffs[key])
        if shape[:len(term)] != term or shape[len(term):] not in allowed:
            raise ValueError(
                f"rule {name!r}: coefficient {key!r} has shape {shape}; for w {tuple(w_shape)} "
                f"expected {term} + one of {allowed}")


def check_coeff_names(name: str, defaults: Mapping[str, np.ndarray], coeffs) -> None:
    """Raises ValueError unless ``coeffs`` is a mapping with exactly the rule's names."""
    if not isinstance(coeffs, Mapping) or set(coeffs) != set(defaults):
        got = sorted(coeffs) if isinstance(coeffs, Mapping) else type(coeffs).__name__
        raise ValueError(f"rule {name!r}: coeffs must have keys {sorted(defaults)}, got {got}")


def hyperparameter(rule: str, name: str, value: Any, bound: checks.Bound) -> Any:
    """``value`` if it is within ``bound`` (as the float32 the rule computes with), else
    `checks.FieldError` naming it as ``rule '<rule>': <name>``: a rule factory checks its
    hyperparameters where they enter, as the command line checks its flags."""
    return bound.check(f"rule {rule!r}: {name}", value)


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
