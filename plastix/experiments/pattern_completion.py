"""Pattern completion with differentiable plasticity (Miconi, Clune & Stanley 2018,
section 4.1), scaled to a CPU: plastic recurrent networks against the same network
without plasticity at a matched number of trained parameters.

    python experiments/pattern_completion.py                  # seeds 0 1 2, every arm
    python experiments/pattern_completion.py --bits 50 --patterns 3 --updates 1000

An episode shows ``--patterns`` random +-1 patterns of ``--bits`` bits, ``--cycles``
times (a fresh random order each cycle), each for ``--present`` steps followed by
``--gap`` steps of zero input; then one of them with half its bits zeroed, for
``--present`` steps. The network is ``--bits`` tanh units (plus hidden units for the
matched baseline), ``x_t = tanh(W(t) x_{t-1} + gain * input_t)``; its state at the last
step must be the whole pattern (loss: mean squared error over the bits, as in the
paper). Score: the fraction of *erased* bits whose sign is wrong (0.5 is chance), on
held-out episodes that no seed trains on.

Arms: the registry rules ``diff_hebb`` and ``diff_oja`` on the recurrent matrix
(``W(t) = w + alpha * Hebb(t)`` through ``rule.init`` / ``rule.update``; trained: ``w``,
per-synapse ``alpha``, one ``eta``), and the non-plastic network ``W(t) = w`` with
``H`` units, ``H`` the integer whose ``H^2`` trained weights are closest to the plastic
networks' ``2 N^2 + 1``; its first ``N`` units take the input and give the output. All
arms see the same training episodes per seed (common random numbers), the same number
of updates, optimiser (Adam after global-norm clipping) and learning rate (3e-3: of
1e-3, 3e-3 and 1e-2 the best for the baseline in a 1000-update pilot; the plastic nets
did as well at 1e-3 and 3e-3). Writes ``report.md``, ``report.json`` and ``curves.png``
to ``--out``.

Reference: Miconi, Clune, Stanley, "Differentiable plasticity: training plastic neural
networks with backpropagation", ICML 2018 (arXiv:1804.02464).

``plastix pattern-completion`` (installed with plastix) and
``python experiments/pattern_completion.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix import checks, cli, rules, runs, train

# Inputs are scaled as in the reference code: a saturating drive clamps a unit to its
# input bit while a pattern is shown, so the trace records the pattern itself.
INPUT_GAIN = 20.0
# Held-out episodes come from their own key; training keys are derived from the seed.
HELD_OUT_KEY = 2**31 - 1
NON_PLASTIC = "non-plastic"
ARMS = ("diff_hebb", "diff_oja", NON_PLASTIC)
REPORT_FILES = ("report.md", "report.json", "curves.png")
KIND = runs.RunKind("pattern-completion", files=REPORT_FILES,
                    recognise=runs.json_with_keys("report.json", "command", "rows"))


@dataclasses.dataclass(frozen=True)
class Task:
    """The episode layout (static: it sets the shapes)."""

    bits: int = 50
    patterns: int = 2
    cycles: int = 2
    present: int = 3
    gap: int = 2

    @property
    def steps(self) -> int:
        return self.cycles * self.patterns * (self.present + self.gap) + self.present


@dataclasses.dataclass(frozen=True)
class Net:
    """A recurrent net of ``units`` tanh units; ``rule`` None is the non-plastic one."""

    units: int
    rule: str | None = None


def sample_episode(task: Task, key):
    """One episode: ``(inputs (steps, bits), target (bits,), erased (bits,) bool)``.

    Exactly half the bits (``bits // 2``) of the test pattern are zeroed, as in the
    reference code's ``full.py``.
    """
    k_patterns, k_order, k_test, k_erase = jax.random.split(key, 4)
    patterns = jnp.where(jax.random.bernoulli(k_patterns, 0.5, (task.patterns, task.bits)),
                         1.0, -1.0)
    orders = jax.vmap(lambda k: jax.random.permutation(k, task.patterns))(
        jax.random.split(k_order, task.cycles))
    shown = patterns[orders.reshape(-1)]                            # (cycles * patterns, bits)
    presentations = jnp.concatenate(
        [jnp.repeat(shown[:, None], task.present, axis=1),
         jnp.zeros((len(shown), task.gap, task.bits))], axis=1).reshape(-1, task.bits)
    target = patterns[jax.random.randint(k_test, (), 0, task.patterns)]
    erased = jax.random.permutation(k_erase, task.bits) < task.bits // 2
    cue = jnp.where(erased, 0.0, target)
    inputs = jnp.concatenate([presentations, jnp.repeat(cue[None], task.present, axis=0)])
    return inputs, target, erased


def sample_batch(task: Task, key, batch: int):
    return jax.vmap(lambda k: sample_episode(task, k))(jax.random.split(key, batch))


def init_params(net: Net, key) -> dict:
    """``w ~ N(0, 1 / units)``; a plastic net adds its rule's default coefficients,
    ``alpha`` per synapse and the rest (``eta``) shared.

    The reference code starts ``w`` at ``0.01 N(0, 1)``; the usual ``1 / sqrt(units)``
    scale is what the non-plastic baseline prefers (a pilot: 0.36 against 0.39 erased
    bits wrong after 1000 updates) and changes little for the plastic nets, so every arm
    starts there.
    """
    params = {"w": jax.random.normal(key, (net.units, net.units)) / math.sqrt(net.units)}
    if net.rule is not None:
        rule, shape = rules.get(net.rule), (net.units, net.units)
        per_synapse = rules.init_coeffs(rule, shape, "synapse")
        shared = rules.init_coeffs(rule, shape, "shared")
        params["coeffs"] = {name: per_synapse[name] if name == "alpha" else shared[name]
                            for name in shared}
    return params


def count_params(params) -> int:
    """The number of trained scalars (``params`` may be arrays or their shapes)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def matched_units(n_params: int, at_least: int) -> int:
    """The ``H >= at_least`` whose ``H^2`` recurrent weights are closest to ``n_params``."""
    root = math.isqrt(n_params)
    return max(at_least, min((root, root + 1), key=lambda h: abs(h * h - n_params)))


def final_state(net: Net, params: dict, inputs):
    """Runs one episode (``lax.scan`` over time) and returns the input units' last state.

    ``x_t = tanh(W x_{t-1} + gain * input_t)``, then ``W <- W + dW`` from the rule with
    ``pre = x_{t-1}`` and ``post = x_t``; the plastic rules keep ``W = w + alpha * Hebb``.
    """
    bits = inputs.shape[-1]
    drive = INPUT_GAIN * jnp.pad(inputs, ((0, 0), (0, net.units - bits)))
    rule = None if net.rule is None else rules.get(net.rule)

    def step(carry, drive_t):
        w, state, x = carry
        y = jnp.tanh(w @ x + drive_t)
        if rule is not None:
            dw, state = rule.update(params["coeffs"], state, w, x, y)
            w = w + dw
        return (w, state, y), None

    w0 = params["w"]
    start = (w0, () if rule is None else rule.init(w0), jnp.zeros(net.units))
    (_, _, x), _ = jax.lax.scan(step, start, drive)
    return x[:bits]


def episode_scores(net: Net, params: dict, episodes):
    """Per episode: squared error over all bits, and the fraction of erased bits wrong."""
    inputs, target, erased = episodes
    out = jax.vmap(lambda x: final_state(net, params, x))(inputs)
    mse = jnp.mean((out - target) ** 2, axis=-1)
    wrong = jnp.sum((jnp.sign(out) != target) & erased, axis=-1) / jnp.sum(erased, axis=-1)
    return mse, wrong


def batch_loss(net: Net, params: dict, episodes):
    mse, wrong = episode_scores(net, params, episodes)
    return jnp.mean(mse), jnp.mean(wrong)


def train_updates(net: Net, task: Task, opt, batch: int, params, opt_state, seed_key, first,
                  count: int):
    """``count`` Adam updates (``lax.scan``) on fresh episodes; the episodes of update
    ``u`` are drawn from ``fold_in(seed_key, u)``, so every arm of a seed sees the same."""

    def update(carry, u):
        params, opt_state = carry
        episodes = sample_batch(task, jax.random.fold_in(seed_key, u), batch)
        (loss, wrong), grads = jax.value_and_grad(
            lambda p: batch_loss(net, p, episodes), has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, wrong)

    return jax.lax.scan(update, (params, opt_state), first + jnp.arange(count))


def held_out(task: Task, episodes: int):
    # Jitted: run op by op, the sampling compiles dozens of small programs.
    sample = jax.jit(sample_batch, static_argnums=(0, 2))
    return sample(task, jax.random.key(HELD_OUT_KEY), episodes)


def train_arm(net: Net, task: Task, args, test_curve, test_final) -> dict:
    """Trains every seed at once (``vmap``); held-out scores every ``--eval-every``."""
    opt = train.make_optimizer(args.lr, args.clip)
    seed_keys = jax.vmap(jax.random.key)(jnp.asarray(args.seeds))
    params = jax.vmap(lambda k: init_params(net, jax.random.fold_in(k, 0)))(seed_keys)
    opt_state = jax.vmap(opt.init)(params)
    train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)

    def chunk(params, opt_state, key, first, count):
        return train_updates(net, task, opt, args.batch, params, opt_state, key, first, count)

    chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, None, None)), static_argnums=4)
    score = jax.jit(jax.vmap(lambda p, e: batch_loss(net, p, e), in_axes=(0, None)))
    curve = {"updates": [], "loss": [], "error": []}

    def record(done):
        loss, wrong = score(params, test_curve)
        curve["updates"].append(done)
        curve["loss"].append(np.asarray(loss).tolist())
        curve["error"].append(np.asarray(wrong).tolist())

    record(0)
    train_loss = []
    for first in range(0, args.updates, args.eval_every):
        count = min(args.eval_every, args.updates - first)
        (params, opt_state), (losses, _) = chunk(params, opt_state, train_keys, first, count)
        train_loss.append(np.asarray(losses))
        record(first + count)
    loss, wrong = score(params, test_final)
    one = jax.tree.map(lambda x: x[0], params)
    row = {"arm": net.rule or NON_PLASTIC, "units": net.units, "params": count_params(one),
           "seeds": list(args.seeds),
           "held_out_error": np.asarray(wrong).tolist(),
           "held_out_loss": np.asarray(loss).tolist(),
           "median_error": float(np.median(wrong)), "median_loss": float(np.median(loss)),
           # before any update, on the curve's held-out episodes
           "untrained_error": curve["error"][0],
           "train_loss_last_100": np.concatenate(train_loss, axis=1)[:, -100:].mean(1).tolist(),
           "curve": curve}
    if net.rule is not None:
        row["learned"] = {
            "eta": np.asarray(params["coeffs"]["eta"]).tolist(),
            "mean_alpha": np.asarray(params["coeffs"]["alpha"].mean((1, 2))).tolist(),
            "mean_abs_w": np.asarray(jnp.abs(params["w"]).mean((1, 2))).tolist()}
    return row


def nets_for(task: Task, arms) -> list[Net]:
    """The plastic nets have ``bits`` units; the non-plastic one is matched in count."""
    plastic = [Net(task.bits, arm) for arm in arms if arm != NON_PLASTIC]
    nets = list(plastic)
    if NON_PLASTIC in arms:
        reference = plastic[0] if plastic else Net(task.bits, "diff_hebb")
        shapes = jax.eval_shape(lambda key: init_params(reference, key), jax.random.key(0))
        nets.append(Net(matched_units(count_params(shapes), task.bits)))
    return nets


def markdown(rows: list[dict], task: Task, args, seconds: float, command: str) -> str:
    lines = [
        "# Pattern completion (Miconi et al. 2018, section 4.1), scaled to a CPU", "",
        f"`{command}`", "",
        f"{task.patterns} patterns of {task.bits} bits, shown {task.cycles} times for "
        f"{task.present} steps with {task.gap}-step gaps, then one with half its bits "
        f"zeroed for {task.present} steps ({task.steps} steps per episode). "
        f"{args.updates} Adam updates (lr {args.lr:g}, global-norm clip {args.clip:g}) of "
        f"{args.batch} episodes each; held-out scores on {args.held_out} episodes no seed "
        f"trains on. Error: fraction of erased bits with the wrong sign (chance 0.5).", "",
        "| arm | units | trained parameters | held-out error per seed | median error | "
        "held-out MSE per seed | median MSE | median error before training |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{e:.4f}" for e in r["held_out_error"])
        losses = ", ".join(f"{v:.4f}" for v in r["held_out_loss"])
        lines.append(f"| {r['arm']} | {r['units']} | {r['params']} | {errors} | "
                     f"{r['median_error']:.4f} | {losses} | {r['median_loss']:.4f} | "
                     f"{np.median(r['untrained_error']):.4f} |")
    lines += ["", f"Seeds {list(args.seeds)}; wall time {seconds:.0f} s.", ""]
    learned = [r for r in rows if "learned" in r]
    if learned:
        lines += ["Learned plasticity (per seed):", ""]
        for r in learned:
            eta = ", ".join(f"{v:.3f}" for v in r["learned"]["eta"])
            alpha = ", ".join(f"{v:.3f}" for v in r["learned"]["mean_alpha"])
            lines.append(f"- {r['arm']}: eta {eta}; mean alpha {alpha}")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for color, r in zip(("C0", "C1", "C3", "C2"), rows):
        x = np.asarray(r["curve"]["updates"])
        for ax, key in zip(axes, ("error", "loss")):
            values = np.asarray(r["curve"][key])                      # (points, seeds)
            ax.plot(x, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(x, np.median(values, axis=1), color=color,
                    label=f"{r['arm']} ({r['params']} params)")
    axes[0].set_ylabel("held-out error on erased bits")
    axes[1].set_ylabel("held-out MSE")
    for ax in axes:
        ax.set_xlabel("update")
        ax.legend(fontsize=8)
    fig.suptitle("Pattern completion: median over seeds (thin: each seed)")
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)


# Seeds are vmapped as one int32 array (`train_arm`).
SEED = checks.integer(at_least=-2**31, at_most=2**31 - 1)


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=checks.integer(at_least=2), default=50,
                   help="pattern size N (half of it is erased)")
    p.add_argument("--patterns", type=checks.SIZE, default=2, help="patterns per episode")
    p.add_argument("--cycles", type=checks.SIZE, default=2, help="times each pattern is shown")
    p.add_argument("--present", type=checks.SIZE, default=3, help="steps per presentation")
    p.add_argument("--gap", type=checks.COUNT, default=2, help="zero-input steps after each")
    p.add_argument("--updates", type=checks.SIZE, default=2000)
    p.add_argument("--batch", type=checks.SIZE, default=16, help="episodes per update")
    p.add_argument("--lr", type=checks.RATE, default=3e-3)
    p.add_argument("--clip", type=checks.RATE, default=1.0, help="global gradient-norm clip")
    p.add_argument("--eval-every", type=checks.SIZE, default=100)
    p.add_argument("--held-out", type=checks.SIZE, default=2000, help="held-out episodes")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--out", default="runs/pattern_completion")
    return p


def parse_args(argv=None):
    """The checked command line; ValueError naming the flag for a mistake."""
    args = parser().parse_args(argv)
    for flag, values in (("--seeds", args.seeds), ("--arms", args.arms)):
        if len(set(values)) != len(values):
            raise checks.FieldError(flag, f"must not repeat a value, got {values}")
    return args


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = " ".join(["python experiments/pattern_completion.py", *argv])
    task = Task(args.bits, args.patterns, args.cycles, args.present, args.gap)
    runs.claim(args.out, KIND, "auto")
    test_final = held_out(task, args.held_out)
    test_curve = jax.tree.map(lambda x: x[:min(512, args.held_out)], test_final)
    start, rows = time.perf_counter(), []
    for net in nets_for(task, args.arms):
        arm_start = time.perf_counter()
        row = train_arm(net, task, args, test_curve, test_final)
        row["seconds"] = round(time.perf_counter() - arm_start, 1)
        rows.append(row)
        print(f"{row['arm']} ({row['units']} units, {row['params']} params): held-out error "
              f"{row['held_out_error']}, MSE {row['held_out_loss']} ({row['seconds']} s)",
              flush=True)
    seconds = time.perf_counter() - start
    report = markdown(rows, task, args, seconds, command)
    runs.write_text(os.path.join(args.out, "report.md"), report)
    runs.write_json(os.path.join(args.out, "report.json"), {
        "command": command, "args": vars(args), "task": dataclasses.asdict(task),
        "steps": task.steps, "seconds": round(seconds, 1), "rows": rows})
    plot(rows, os.path.join(args.out, "curves.png"))
    print("\n" + report)
    print(f"wrote {args.out}/: report.md report.json curves.png")
    return rows

