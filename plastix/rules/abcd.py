"""The ABCD family of Najarro & Risi (2020), all nine variants of their reference code.

Every variant is one instance of

``dw = eta * (A x y + B x + C y + D) + D_out``     (x = pre, y = post)

with some terms absent: a variant without ``eta`` adds the bracket directly, and ``D``
sits inside the learning rate (their ``D_in``) while ``D_out`` sits outside. The
variant -> terms table below mirrors ``hebbian_update_<variant>`` in
github.com/enajx/HebbianMetaLearning (``hebbian_weights_update.py``), where ``ABCD_lr``
is ``hebbian_update_ABCD_lr_D_in``. Their coefficient vector for a synapse is
``[A, B, C, eta, D_in, D_out]`` (absent terms skipped); here coefficients are named.

Their flat index for synapse (post j, pre i) is ``i * n_post + j`` (pre-major); plastix
stores per-synapse coefficients as ``(n_post, n_pre)`` arrays, flattened in C order
(post-major) by ``ravel_pytree``. Convert with ``.reshape(n_pre, n_post).T`` when
loading their evolved coefficients.

Reference:
  Najarro & Risi, "Meta-Learning through Hebbian Plasticity in Random Networks",
  NeurIPS 2020.
"""

from __future__ import annotations

from plastix.rules._core import Rule, make_rule, outer, register

# variant -> coefficient names; which of A, B, C, D, eta, D_out each variant has.
VARIANTS: dict[str, tuple[str, ...]] = {
    "A": ("A",),
    "AD": ("A", "D"),
    "AD_lr": ("A", "D", "eta"),
    "ABC": ("A", "B", "C"),
    "ABC_lr": ("A", "B", "C", "eta"),
    "ABCD": ("A", "B", "C", "D"),
    "ABCD_lr": ("A", "B", "C", "D", "eta"),
    "ABCD_lr_D_out": ("A", "B", "C", "eta", "D_out"),
    "ABCD_lr_D_in_and_out": ("A", "B", "C", "D", "eta", "D_out"),
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

        return make_rule(variant, update, _defaults(terms))

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
