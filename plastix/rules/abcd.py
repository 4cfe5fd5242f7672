"""The ABCD family of Najarro & Risi (2020), all nine variants of their reference code.

Every variant is one instance of

``dw = eta * (A x y + B x + C y + D) + D_out``     (x = pre, y = post)

with some terms absent: a variant without ``eta`` adds the bracket directly, and ``D``
sits inside the learning rate (their ``D_in``) while ``D_out`` sits outside. The
variant -> terms table below mirrors ``hebbian_update_<variant>`` in
github.com/enajx/HebbianMetaLearning (``hebbian_weights_update.py``), where ``ABCD_lr``
is ``hebbian_update_ABCD_lr_D_in``. Here coefficients are named; their per-synapse
coefficient vector, in their index order, is

==========================  ==================================
``A``                       ``[A]`` (a scalar, not a vector)
``AD``                      ``[A, D]``
``AD_lr``                   ``[A, D, eta]``
``ABC``                     ``[A, B, C]``
``ABC_lr``                  ``[A, B, C, eta]``
``ABCD``                    ``[A, B, C, D]``
``ABCD_lr``                 ``[A, B, C, eta, D]``
``ABCD_lr_D_out``           ``[A, B, C, eta, D_out]``
``ABCD_lr_D_in_and_out``    ``[A, B, C, eta, D, D_out]``
==========================  ==================================

Their flat index for synapse (post j, pre i) is ``i * n_post + j`` (pre-major); plastix
stores per-synapse coefficients as ``(n_post, n_pre)`` arrays, flattened in C order
(post-major) by ``ravel_pytree``. Convert with ``.reshape(n_pre, n_post).T`` when
loading their evolved coefficients.

Every variant's update is an outer product plus a per-row term,
``dw = (a y + b) x^T + (c y + d)`` with ``a = eta A``, ``b = eta B``, ``c = eta C``,
``d = eta D + D_out``; `abcd_outer_affine` returns those factors (`Rule.outer_affine`),
so a caller can fuse the update into its own matrix products.

Reference:
  Najarro & Risi, "Meta-Learning through Hebbian Plasticity in Random Networks",
  NeurIPS 2020.
"""

from __future__ import annotations

from plastix.rules._core import OuterAffine, Rule, make_rule, outer, register

# variant -> coefficient names: which of A, B, C, D, eta, D_out each variant has, in the
# column order of the reference code's per-synapse vector (plastix.najarro reads it so).
VARIANTS: dict[str, tuple[str, ...]] = {
    "A": ("A",),
    "AD": ("A", "D"),
    "AD_lr": ("A", "D", "eta"),
    "ABC": ("A", "B", "C"),
    "ABC_lr": ("A", "B", "C", "eta"),
    "ABCD": ("A", "B", "C", "D"),
    "ABCD_lr": ("A", "B", "C", "eta", "D"),  # their hebbian_update_ABCD_lr_D_in
    "ABCD_lr_D_out": ("A", "B", "C", "eta", "D_out"),
    "ABCD_lr_D_in_and_out": ("A", "B", "C", "eta", "D", "D_out"),
}


def abcd_update(coeffs, pre, post):
    """``dw = eta * (A x y + B x + C y + D) + D_out`` over the terms present in ``coeffs``.

    Absent terms are skipped at trace time (not multiplied by zero), so each variant
    compiles to exactly its reference equation.
    """
    dw = coeffs["A"] * outer(post, pre)
    if "B" in coeffs:
        dw = dw + coeffs["B"] * pre[None, :]
    if "C" in coeffs:
        dw = dw + coeffs["C"] * post[:, None]
    if "D" in coeffs:
        dw = dw + coeffs["D"]
    if "eta" in coeffs:
        dw = coeffs["eta"] * dw
    if "D_out" in coeffs:
        dw = dw + coeffs["D_out"]
    return dw


def abcd_outer_affine(coeffs) -> OuterAffine:
    """The factors of `abcd_update` as ``dw = (a y + b) x^T + (c y + d)``.

    ``a = eta A``, ``b = eta B``, ``c = eta C``, ``d = eta D + D_out``, each scaled by
    ``eta`` only if the variant has it; a term whose coefficients are absent is ``None``.
    """
    eta = coeffs["eta"] if "eta" in coeffs else None

    def scaled(key):
        if key not in coeffs:
            return None
        return coeffs[key] if eta is None else eta * coeffs[key]

    d = scaled("D")
    if "D_out" in coeffs:
        d = coeffs["D_out"] if d is None else d + coeffs["D_out"]
    return OuterAffine(scaled("A"), scaled("B"), scaled("C"), d)


def _defaults(terms):
    """Plain Hebb at rate 0.01: ``A`` carries the rate unless the variant has ``eta``."""
    has_lr = "eta" in terms
    values = {"A": 1.0 if has_lr else 0.01, "eta": 0.01}
    return {t: values.get(t, 0.0) for t in terms}


def _abcd_factory(variant: str):
    terms = VARIANTS[variant]

    def factory() -> Rule:
        def update(coeffs, state, w, pre, post, mod):
            del w, mod
            return abcd_update(coeffs, pre, post), state

        return make_rule(variant, update, _defaults(terms), outer_affine=abcd_outer_affine)

    factory.__name__ = factory.__qualname__ = variant
    factory.__doc__ = (
        f"Najarro & Risi (2020) ABCD variant ``{variant}``: coefficients "
        f"{', '.join(terms)}.\n\n"
        "``dw = eta * (A x y + B x + C y + D) + D_out`` keeping only those terms "
        "(see `plastix.rules.abcd`).\n\n"
        "Reference:\n  Najarro & Risi, \"Meta-Learning through Hebbian Plasticity in "
        "Random Networks\", NeurIPS 2020.\n")
    return register(factory)


A = _abcd_factory("A")
AD = _abcd_factory("AD")
AD_lr = _abcd_factory("AD_lr")
ABC = _abcd_factory("ABC")
ABC_lr = _abcd_factory("ABC_lr")
ABCD = _abcd_factory("ABCD")
ABCD_lr = _abcd_factory("ABCD_lr")
ABCD_lr_D_out = _abcd_factory("ABCD_lr_D_out")
ABCD_lr_D_in_and_out = _abcd_factory("ABCD_lr_D_in_and_out")
