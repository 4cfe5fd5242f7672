"""Hebbian masks on gradient-trained layers: prune and regrow connections while training.

Beside every weight w_io of a wrapped layer (a flax ``Dense`` or ``Conv`` kernel, or an
``Embed`` table whose input is read as a one-hot token) lives a Hebbian value h_io and a
mask m_io in {0, 1}. After each batch, with x the layer's input and y its output
(computed with the mask applied),

    c_io = mean_n s(x_ni) s(y_no)                            (co-activity over the batch)
    a_io = c_io, sign(w_io) c_io, or w_io c_io / <|w c|>_o   (the agreement, see below)
    h_io <- clip(h_io + rate * (a_io - margin), -limit, limit)
    m_io <- 0 where h_io < prune_below;  1 where h_io > regrow_above;  else unchanged

and the forward pass uses w * m: a pruned connection takes no part in the output and
gets no gradient. Its value h keeps integrating the co-activity of its two neurons, so
it regrows when they come to agree. The step is `plastix.rules.step_mask`, the one the
`hebbian_mask` plasticity rule takes with a single example's signs (margin 0).

For a convolution, n runs over the examples and the output positions, and x_ni is the
input that kernel entry i sees at that position: c is the correlation of input patches
with outputs. It is computed for every layer kind alike, as the transpose of the
layer's own linear map applied to s(y) (``jax.vjp`` of kernel -> layer(s(x), kernel)),
so strides, padding and dilation are the layer's.

The agreements (``agreement=``):

* ``"sign"``: s = sign; a = c. The rule as `plastix.rules.hebbian_mask` states it: a
  synapse gains when its two neurons' activations have the same sign.
* ``"centred"``: s(v) = sign(v - <v>), each neuron against its mean over the batch (and
  positions): a covariance rule in signs (Sejnowski 1977). On a softmax readout the
  logits' zero is arbitrary (adding a constant to every logit changes nothing) and with
  the plain sign rule training settles where most logits are positive and most
  connections agree; centring removes that freedom.
* ``"contribution"``: a = sign(w) c with s = sign: whether the connection's own
  contribution w x agrees in sign with the output.
* ``"product"``: s = identity and a = w c, scaled so that the inputs of each output o
  have mean magnitude 1 (<|w c|>_o is the mean over the inputs i, and over the kernel's
  positions for a convolution): the reference implementation's update, which adds
  lr (y x^T) * w to a permanence clipped to [-1, 1] and keeps p > 0, with the inputs of
  each output neuron competing among themselves (scaled over the whole layer instead, a
  weakly driven output loses every input at high margins and its class is never
  predicted). For a linear layer y_o = sum_j w_jo x_j + b_o, w c is
  w_io sum_j w_jo <x_i x_j> + ..., about w_io^2 <x_i^2> when the inputs are uncorrelated:
  an activity-weighted magnitude (Optimal Brain Damage's saliency of a least-squares
  layer), estimated by a Hebbian product.
* ``"covariance"``: as "product" with s(v) = v - <v>: w times the covariance of the two
  neurons, about w_io^2 var(x_i). Without the centring, the mean activities dominate
  (with non-negative inputs, c_io ~ <x_i><y_o>) and the sign of w alone decides.

``margin`` is the agreement a connection needs to stay: the long-run fate of a connection
is set by the sign of its mean a - margin (the thresholds and the rate set only how fast
and with what hysteresis it gets there), so the margin is what sets the sparsity.

The idea is that of "hebbian masks" (a PyTorch wrapper, ``HebbMask(nn.Linear(128, 10),
['weight'])``): keep beside each gradient-learned weight a Hebbian value that grows when
the two neurons' activations agree in sign and shrinks when they disagree, and prune the
weights whose value is low; on the final layer of a wide ResNet it was reported to prune
over 90% of the synapses at the same validation error. Its yardstick here is magnitude
pruning (Han, Pool, Tran & Dally 2015, "Learning both weights and connections for
efficient neural networks": train, prune the smallest |w|, retrain with the mask fixed)
and a random mask of the same sparsity.

Design: the masks live in the optimiser state. ``HebbianMasking(...).wrap(inner)`` is an
optax transformation whose state is ``MaskedState(inner, masks)``, so a training loop's
state, checkpoints and resume carry the masks without a field of their own.
``HebbianMasking.apply`` runs the model with the masks applied and measures each masked
layer's co-activity c on the way (the model's code needs no change); the optimiser's
update takes it as an extra argument (``coactivity=``), steps the masks, runs ``inner``
and then, for every connection that is pruned before or after the step, zeroes the update
and keeps the inner state (Adam's moments, ...) as it was: a regrown connection comes back
with the weight and the moments it had when it was pruned.

Example:
    >>> masking = HebbianMasking(layers=("logits",), rate=0.01, agreement="centred",
    ...                          margin=0.5)
    >>> optimizer = masking.wrap(optax.adam(1e-3))
    >>> opt_state = optimizer.init(params)
    >>> def loss(params):
    ...     logits, coactivity = masking.apply(model, params, opt_state, inputs)
    ...     return cross_entropy(logits, labels), coactivity
    >>> grads, coactivity = jax.grad(loss, has_aux=True)(params)
    >>> updates, new_state = optimizer.update(grads, opt_state, params, coactivity=coactivity)
    >>> mask_stats(opt_state, new_state)   # {"sparsity", "pruned", "regrown"}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from plastix.rules.structural import HebbianMaskState, check_mask_thresholds, step_mask

AGREEMENTS = ("sign", "centred", "contribution", "product", "covariance")
# Layers a mask can wrap: their output is linear in the weight named here (plus a bias).
# An Embed's input is a token id, read as its one-hot vector.
MASKABLE = ((nn.Dense, "kernel"), (nn.Conv, "kernel"), (nn.Embed, "embedding"))
WEIGHT_NAMES = tuple(dict.fromkeys(name for _, name in MASKABLE))
_COACTIVITY = "hebbian_mask_coactivity"  # what the forward pass sows each layer's c under


@dataclasses.dataclass(frozen=True)
class HebbianMasking:
    """Which layers carry Hebbian masks, and the rule's numbers.

    Attributes:
      layers: flax module paths ("/"-joined) of the masked ``Dense`` / ``Conv`` / ``Embed``
        layers, e.g. ``("logits",)`` for `plastix.models.TokenModel`'s readout.
      rate: step of the Hebbian value per batch; 0 keeps the masks as they are.
      prune_below, regrow_above, limit: as in `plastix.rules.hebbian_mask` (and its
        defaults); need ``-limit < prune_below <= regrow_above < limit``.
      agreement: "sign", "centred", "contribution" or "product" (module docstring).
      margin: subtracted from the agreement: what a connection needs to stay; in [-1, 1)
        for the sign agreements (which lie in [-1, 1]), any finite number for "product"
        (in units of the mean agreement magnitude of each output's inputs).
      fixed: masks never change (as with rate 0): the fixed-mask baselines (magnitude
        pruning, random masks) train this way.
    """

    layers: tuple[str, ...]
    rate: float = 0.1
    prune_below: float = -1.0
    regrow_above: float = 1.0
    limit: float = 2.0
    agreement: str = "sign"
    margin: float = 0.0
    fixed: bool = False

    def __post_init__(self):
        if isinstance(self.layers, str) or not isinstance(self.layers, Sequence):
            raise ValueError(f"HebbianMasking layers must be a tuple of layer paths, got "
                             f"{self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))  # hashable, JSON-able
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"HebbianMasking layers must be distinct and at least one, got "
                             f"{self.layers!r}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"HebbianMasking rate must be finite and >= 0, got {self.rate}")
        check_mask_thresholds("HebbianMasking", self.prune_below, self.regrow_above,
                              self.limit)
        if self.agreement not in AGREEMENTS:
            raise ValueError(f"HebbianMasking agreement must be one of {AGREEMENTS}, got "
                             f"{self.agreement!r}")
        if self.agreement in ("product", "covariance"):
            if not math.isfinite(self.margin):
                raise ValueError(f"HebbianMasking margin must be finite, got {self.margin}")
        elif not -1.0 <= self.margin < 1.0:
            raise ValueError(f"HebbianMasking margin must lie in [-1, 1) with agreement "
                             f"{self.agreement!r}, got {self.margin}")

    @property
    def frozen(self) -> bool:
        """Whether the masks stay as they were initialised."""
        return self.fixed or self.rate == 0

    def wrap(self, inner: optax.GradientTransformation,
             initial_masks: Mapping[str, Any] | None = None,
             ) -> optax.GradientTransformationExtraArgs:
        """``inner`` with these masks in its state (`MaskedState`); see the module docstring.

        ``init(params)`` starts every mask connected, or at ``initial_masks`` ({layer:
        0/1 array shaped like its weight}). ``update(updates, state, params,
        coactivity=..., **extra)``: ``params`` is required; ``coactivity`` is
        `apply`'s, and may be left out when the masks are frozen; ``extra`` goes to
        ``inner``.
        """
        return masked_transformation(self, inner, initial_masks)

    def apply(self, model: nn.Module, params, opt_state, *inputs, **kwargs):
        """``(outputs, coactivity)``: ``model.apply`` with the masks of ``opt_state``
        applied, and each masked layer's co-activity c ({layer: array shaped like its
        weight}, outside the gradient), measured on that forward pass.

        The layers are found by intercepting their calls (``flax.linen.intercept_methods``),
        so the model's code needs no change. A layer called more than once is measured
        over all its calls. A layer applied inside a ``scan`` (e.g. within a recurrent
        cell) cannot be measured this way.
        """
        return apply_masked(self, model, params, opt_state, *inputs, **kwargs)


class MaskedState(NamedTuple):
    """The optimiser state of a wrapped transformation."""
    inner: Any                             # the inner transformation's state
    masks: dict[str, HebbianMaskState]     # layer path -> (value, mask), in weight layout


# --- layers and weights --------------------------------------------------------------------


def _trainable(params):
    # model.init returns {"params": {...}}; a bare parameter dict is accepted as well.
    return params["params"] if isinstance(params, Mapping) and "params" in params else params


def maskable_layers(params) -> dict[str, str]:
    """``{layer path: weight name}`` of every layer a mask can wrap: the ``kernel`` of
    Dense and Conv layers and the ``embedding`` of Embed layers, in parameter order."""
    flat = traverse_util.flatten_dict(_trainable(params))
    return {"/".join(path[:-1]): path[-1] for path, leaf in flat.items()
            if path[-1] in WEIGHT_NAMES and jnp.ndim(leaf) >= 2}


def _weight_paths(params, layers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Path of each layer's weight in ``params`` (a tuple of dict keys)."""
    known = maskable_layers(params)
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise ValueError(f"no Dense, Conv or Embed layer {unknown[0]!r} in the model; its "
                         f"maskable layers: {sorted(known)}")
    top = ("params",) if "params" in params else ()
    return {layer: top + tuple(layer.split("/")) + (known[layer],) for layer in layers}


def _map_weights(fn, tree, weight_paths: Mapping[str, tuple], other=lambda leaf: leaf):
    """``tree`` (params-shaped) with ``fn(layer, leaf)`` at the wrapped weights and
    ``other(leaf)`` elsewhere."""
    layer_at = {path: layer for layer, path in weight_paths.items()}

    def visit(path, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        layer = layer_at.get(keys)
        return other(leaf) if layer is None else fn(layer, leaf)

    return jax.tree_util.tree_map_with_path(visit, tree)


def _weight(params, path: tuple[str, ...]):
    for key in path:
        params = params[key]
    return params


# --- co-activity, measured in the forward pass ------------------------------------------------


def _signal(v, kind: str):
    """s(v) of the agreement ``kind``: the neuron's sign, its sign against its mean over
    every axis but the last (features / channels), or v itself."""
    if kind in ("centred", "covariance"):
        v = v - jnp.mean(v, axis=tuple(range(v.ndim - 1)), keepdims=True)
    return v if kind in ("product", "covariance") else jnp.sign(v)


def layer_coactivity(module: nn.Module, x, y, kind: str) -> tuple[jax.Array, jax.Array]:
    """``(sum, count)``: sum_n s(x_ni) s(y_no) over the examples and output positions n of
    one call of ``module`` (input ``x``, output ``y``), in the layout of its weight, and the
    number of those n.

    The sum is the transpose of the layer's linear map (its weight -> output at input
    s(x), bias zero) applied to s(y): for a Dense layer s(x)^T s(y), for a convolution the
    correlation of s(x)'s patches with s(y) under the layer's own strides and padding.
    """
    ys = _signal(y, kind)
    count = jnp.asarray(ys.size // ys.shape[-1], jnp.float32)
    if isinstance(module, nn.Embed):  # a token is its one-hot vector
        xs = _signal(jax.nn.one_hot(x, module.num_embeddings, dtype=y.dtype), kind)
        xs, ys = xs.reshape(-1, xs.shape[-1]), ys.reshape(-1, ys.shape[-1])
        return xs.T @ ys, count
    xs = _signal(x, kind)
    kernel = module.variables["params"]["kernel"]
    unbiased = module.clone(parent=None, name=None, use_bias=False)
    _, transpose = jax.vjp(lambda k: unbiased.apply({"params": {"kernel": k}}, xs), kernel)
    return transpose(ys)[0], count


def apply_masked(masking: HebbianMasking, model: nn.Module, params, opt_state, *inputs,
                 **kwargs):
    """`HebbianMasking.apply`."""
    masks = masks_of(opt_state)
    watched = set(masks)
    measuring = []  # set while a measurement re-applies a layer, which is not intercepted

    def capture(next_fun, args, call_kwargs, context):
        out = next_fun(*args, **call_kwargs)
        module = context.module
        if (not measuring and context.method_name == "__call__"
                and isinstance(module, tuple(kind for kind, _ in MASKABLE))
                and "/".join(module.path) in watched):
            measuring.append(module)
            total = layer_coactivity(module, *jax.lax.stop_gradient((args[0], out)),
                                     masking.agreement)
            measuring.pop()
            module.sow("intermediates", _COACTIVITY, total)
        return out

    with nn.intercept_methods(capture):
        outputs, variables = model.apply(masked_params(params, opt_state), *inputs,
                                         mutable=["intermediates"], **kwargs)
    flat = traverse_util.flatten_dict(variables.get("intermediates", {}))
    coactivity = {}
    for path, calls in flat.items():
        if path[-1] == _COACTIVITY:
            total, count = (sum(parts) for parts in zip(*calls))
            coactivity["/".join(path[:-1])] = total / count
    return outputs, coactivity


# --- the optax transformation --------------------------------------------------------------


def agreement(masking: HebbianMasking, coactivity, weight):
    """a of the module docstring, from a layer's co-activity c and its (unmasked) weight
    (both in weight layout, the output last)."""
    if masking.agreement == "contribution":
        return jnp.sign(weight) * coactivity
    if masking.agreement in ("product", "covariance"):
        product = weight * coactivity
        per_output = jnp.mean(jnp.abs(product), axis=tuple(range(product.ndim - 1)),
                              keepdims=True)
        return product / jnp.maximum(per_output, jnp.finfo(product.dtype).tiny)
    return coactivity


def masked_transformation(masking: HebbianMasking, inner: optax.GradientTransformation,
                          initial_masks: Mapping[str, Any] | None = None,
                          ) -> optax.GradientTransformationExtraArgs:
    """`HebbianMasking.wrap`."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        paths = _weight_paths(params, masking.layers)
        masks = {layer: _initial_mask(_weight(params, path), layer, initial_masks)
                 for layer, path in paths.items()}
        return MaskedState(inner.init(params), masks)

    def update(updates, state: MaskedState, params=None, *, coactivity=None, **extra):
        if params is None:
            raise ValueError("a Hebbian-masked optimiser needs params: "
                             "update(updates, state, params, coactivity=...)")
        paths = _weight_paths(params, masking.layers)
        before = state.masks
        after = before if masking.frozen else _stepped_masks(masking, before, params, paths,
                                                             coactivity)
        inner_updates, inner_state = inner.update(updates, state.inner, params, **extra)
        # Only a connection present before and after the step moves: a pruned one keeps
        # its weight and its inner state, and one regrown now had no gradient this step
        # (it was masked in the forward pass), so it too resumes where it was pruned.
        keep = _map_weights(lambda layer, _: (before[layer].mask > 0) & (after[layer].mask > 0),
                            updates, paths, other=lambda _: True)
        inner_updates = jax.tree.map(lambda u, k: _select(u, jnp.zeros_like(u), k),
                                     inner_updates, keep)
        keep_state = optax.tree_utils.tree_map_params(
            inner, lambda _, k: k, inner_state, keep, transform_non_params=lambda _: True)
        inner_state = jax.tree.map(_select, inner_state, state.inner, keep_state)
        return inner_updates, MaskedState(inner_state, after)

    return optax.GradientTransformationExtraArgs(init, update)


def _select(new, old, keep):
    # keep is True (a Python bool, at trace time) everywhere but the wrapped weights.
    return new if keep is True else jnp.where(keep, new, old)


def _initial_mask(weight, layer: str, initial_masks) -> HebbianMaskState:
    if initial_masks is None or layer not in initial_masks:
        mask = jnp.ones_like(weight)
    else:
        mask = jnp.asarray(initial_masks[layer], weight.dtype)
        if mask.shape != weight.shape:
            raise ValueError(f"initial mask of layer {layer!r} has shape {mask.shape}, its "
                             f"weight {weight.shape}")
    return HebbianMaskState(jnp.zeros_like(weight), mask)


def _stepped_masks(masking: HebbianMasking, masks, params, paths, coactivity) -> dict:
    if coactivity is None:
        raise ValueError("Hebbian masks need the layers' co-activity: update(grads, state, "
                         "params, coactivity=masking.apply(...)[1])")
    missing = [layer for layer in masking.layers if layer not in coactivity]
    if missing:
        raise ValueError(f"no co-activity of masked layer {missing[0]!r} (measured: "
                         f"{sorted(coactivity)}); only Dense, Conv and Embed layers called "
                         "outside a scan are measured")
    stepped = {}
    for layer, path in paths.items():
        a = agreement(masking, coactivity[layer], _weight(params, path))
        stepped[layer] = step_mask(masks[layer], a - masking.margin, masking.rate,
                                   masking.prune_below, masking.regrow_above, masking.limit)
    return stepped


# --- the forward pass ----------------------------------------------------------------------


def masks_of(opt_state) -> dict[str, HebbianMaskState]:
    """The ``{layer: HebbianMaskState}`` held by an optimiser state of `HebbianMasking.wrap`
    (at its top or anywhere inside, e.g. under a chain)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, MaskedState))
             if isinstance(s, MaskedState)]
    if len(found) != 1:
        raise ValueError(f"expected one Hebbian-masked optimiser state (of HebbianMasking.wrap) "
                         f"in opt_state, found {len(found)}")
    return found[0].masks


def masked_params(params, opt_state):
    """``params`` with every masked weight replaced by ``w * mask``: the weights the forward
    pass uses. Its gradient with respect to ``params`` is zero at pruned connections."""
    masks = masks_of(opt_state)
    paths = _weight_paths(params, list(masks))
    return _map_weights(lambda layer, w: w * masks[layer].mask, params, paths)


# --- statistics and fixed masks ------------------------------------------------------------


def mask_stats(opt_state_before, opt_state_after) -> dict:
    """Of all masked connections: ``sparsity`` (fraction pruned after the step) and the
    ``pruned`` and ``regrown`` counts of the step (float32 scalars)."""
    before, after = masks_of(opt_state_before), masks_of(opt_state_after)
    total = sum(s.mask.size for s in after.values())
    absent = sum(jnp.sum(s.mask == 0) for s in after.values())
    pruned = sum(jnp.sum((before[k].mask > 0) & (after[k].mask == 0)) for k in after)
    regrown = sum(jnp.sum((before[k].mask == 0) & (after[k].mask > 0)) for k in after)
    return {"sparsity": (absent / total).astype(jnp.float32),
            "pruned": jnp.asarray(pruned, jnp.float32),
            "regrown": jnp.asarray(regrown, jnp.float32)}


def sparsity_of(opt_state) -> float:
    """Fraction of the masked connections that are pruned."""
    return float(mask_stats(opt_state, opt_state)["sparsity"])


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")


def _prune_first(order, sparsity: float, shape) -> jax.Array:
    """0/1 mask pruning the ``round(sparsity * size)`` entries that come first in ``order``
    (flat indices)."""
    size = math.prod(shape)
    pruned = jnp.zeros(size, bool).at[order[:round(sparsity * size)]].set(True)
    return jnp.where(pruned, 0.0, 1.0).reshape(shape)


def magnitude_masks(params, layers: Sequence[str], sparsity: float) -> dict[str, jax.Array]:
    """Magnitude pruning (Han et al. 2015): for each layer, the mask that prunes the
    ``round(sparsity * size)`` weights of smallest ``|w|`` (ties: lower index first)."""
    _check_sparsity(sparsity)
    masks = {}
    for layer, path in _weight_paths(params, layers).items():
        w = _weight(params, path)
        masks[layer] = _prune_first(jnp.argsort(jnp.abs(w).ravel(), stable=True), sparsity,
                                    w.shape).astype(w.dtype)
    return masks


def random_masks(key, params, layers: Sequence[str], sparsity: float) -> dict[str, jax.Array]:
    """For each layer, a uniformly random mask that prunes ``round(sparsity * size)`` of its
    weights (the layers draw from ``fold_in(key, index)``)."""
    _check_sparsity(sparsity)
    masks = {}
    for index, (layer, path) in enumerate(_weight_paths(params, layers).items()):
        w = _weight(params, path)
        order = jax.random.permutation(jax.random.fold_in(key, index), w.size)
        masks[layer] = _prune_first(order, sparsity, w.shape).astype(w.dtype)
    return masks


def with_masks(opt_state, masks: Mapping[str, Any]):
    """``opt_state`` with the masks of the given layers set to ``masks`` ({layer: 0/1 array})
    and their Hebbian values reset to zero; the other layers' masks are kept."""
    current = masks_of(opt_state)
    unknown = sorted(set(masks) - set(current))
    if unknown:
        raise ValueError(f"no masked layer {unknown[0]!r} in opt_state; masked layers: "
                         f"{sorted(current)}")
    replaced = dict(current)
    for layer, mask in masks.items():
        old = current[layer]
        mask = jnp.asarray(mask, old.mask.dtype)
        if mask.shape != old.mask.shape:
            raise ValueError(f"mask of layer {layer!r} has shape {mask.shape}, its weight "
                             f"{old.mask.shape}")
        replaced[layer] = HebbianMaskState(jnp.zeros_like(old.value), mask)
    return jax.tree.map(lambda s: s._replace(masks=replaced) if isinstance(s, MaskedState) else s,
                        opt_state, is_leaf=lambda s: isinstance(s, MaskedState))
