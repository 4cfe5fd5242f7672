"""Evolve plasticity rules for in-lifetime sequence prediction (Najarro & Risi 2020 style).

Every lifetime starts from random weights; the network learns only through its
plasticity rule while it reads a sequence. ES (evosax; OpenAI-ES by default) evolves the rule
coefficients so that this in-lifetime learning predicts the scored tokens.

    python experiments/es_abcd.py                          # associative retrieval, ABCD_lr readout
    python experiments/es_abcd.py --task recall_overwrite --rule-out multilinear_mod \
        --strategy CMA_ES --log-rates --init-mean zero --sigma 0.3 --batch 128
    python experiments/es_abcd.py --task text --text-path ../shared/data/tinyshakespeare/input.txt \
        --rule-out polynomial_mod --rule-rec ABCD_lr
    python experiments/es_abcd.py --out runs/x --resume    # continue a killed run
    python experiments/es_abcd.py --out runs/x --resume --generations 800  # or extend it

Writes to --out: config.json, metrics.jsonl, checkpoint.msgpack, report.json,
report.md and plots (fitness.png, coefficients.png, weights.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from plastix import evolve, plastic, rules, tasks

HAND_RULE_ETAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
# Hebb with decay keeps a fraction 1 - eta*decay of each weight per step: the grid is over
# that retention (eta*decay >= 1 would flip or erase the memory every step).
HAND_RULE_RETENTIONS = (0.99, 0.95, 0.9, 0.8, 0.6)
RANDOM_COEFF_DRAWS = 8
# --init-mean delta: the delta rule's best rate on recall_overwrite at U(-0.1, 0.1) weights.
DELTA_START_RATE = 100.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="assoc_retrieval", help="plastix.tasks name")
    p.add_argument("--num-pairs", type=int, default=None, help="pairs per sequence (retrieval tasks)")
    p.add_argument("--num-keys", type=int, default=None, help="key alphabet (recall_overwrite)")
    p.add_argument("--text-path", default=None, help="local text file for --task text")
    p.add_argument("--seq-len", type=int, default=None, help="window length (text tasks)")
    for layer in plastic.LAYERS:
        default = "ABCD_lr" if layer == "out" else "none"
        p.add_argument(f"--rule-{layer}", default=default, help=f"rule of W_{layer} ('none': fixed)")
    p.add_argument("--granularity", default="shared", choices=("shared", "post", "synapse"))
    p.add_argument("--readout-post", default="auto", choices=plastic.READOUT_POSTS)
    p.add_argument("--normalise", default="none", choices=plastic.NORMALISATIONS)
    p.add_argument("--modulation", default="none", choices=plastic.MODULATIONS)
    p.add_argument("--weight-noise", type=float, default=0.0)
    p.add_argument("--evolve-init", action="store_true", help="coevolve the initial weights")
    p.add_argument("--readout-bias", action="store_true", help="always-on unit into the readout")
    p.add_argument("--log-rates", action="store_true", help="evolve log(eta) instead of eta")
    p.add_argument("--init-mean", default="defaults", choices=("defaults", "zero", "delta"),
                   help="ES start: the rules' default coefficients, all zero with eta = 1, or "
                        "the readout at the delta rule (eta = 100)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--init-scale", type=float, default=0.1,
                   help="initial weights U(-a, a) each lifetime (Najarro & Risi: 0.1)")
    p.add_argument("--strategy", default="Open_ES")
    p.add_argument("--pop", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="lifetimes per member per generation")
    p.add_argument("--generations", type=int, default=300)
    p.add_argument("--optimizer", default="sgd", help="ES mean update: sgd or adam")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty on evolved parameters")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=None, help="members evaluated at once")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="evaluate the population in chunks that fit this budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/es_abcd")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def build_task(args):
    config = {}
    if args.num_pairs is not None:
        config["num_pairs"] = args.num_pairs
    if args.num_keys is not None:
        config["num_keys"] = args.num_keys
    if args.text_path is not None:
        config["path"] = args.text_path
    if args.seq_len is not None:
        config["seq_len"] = args.seq_len
    return tasks.get(args.task, **config)


def build_net(args, vocab_size: int) -> plastic.PlasticRNN:
    layer_rules = tuple(
        (layer, getattr(args, f"rule_{layer}"))
        for layer in plastic.LAYERS
        if getattr(args, f"rule_{layer}") != "none"
    )
    return plastic.PlasticRNN(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        init_scale=args.init_scale,
        layer_rules=layer_rules,
        granularity=args.granularity,
        evolve_init=args.evolve_init,
        normalise=args.normalise,
        weight_noise=args.weight_noise,
        readout_post=args.readout_post,
        modulation=args.modulation,
        readout_bias=args.readout_bias,
        log_rates=args.log_rates,
    )


def build_es_config(args) -> evolve.ESConfig:
    return evolve.ESConfig(
        strategy=args.strategy,
        optimizer=args.optimizer,
        population=args.pop,
        batch=args.batch,
        lr=args.lr,
        sigma=args.sigma,
        l2_penalty=args.l2,
        eval_batch=args.eval_batch,
        chunk_size=args.chunk_size,
        memory_budget=None if args.memory_budget_mb is None else int(args.memory_budget_mb * 2**20),
    )


def initial_mean(net: plastic.PlasticRNN, args) -> dict:
    """Where ES starts. "zero": no plasticity term at all but a unit learning rate, so the
    first generations measure which terms help instead of climbing out of a default rule.
    "delta": as "zero", but the readout polynomial starts AT the delta rule
    eta (m - y) x with eta = DELTA_START_RATE -- a diagnostic: does ES stay there?"""
    params = plastic.init_params(net, jax.random.key(args.seed))
    if args.init_mean == "defaults":
        return params
    # Built as the rules see them (eta itself), then mapped to what ES evolves.
    coeffs = {
        layer: {name: jnp.full_like(v, 1.0 if name == "eta" else 0.0)
                for name, v in layer_coeffs.items()}
        for layer, layer_coeffs in plastic.rule_coeffs(net, params).items()
    }
    if args.init_mean == "delta":
        out = coeffs.get("out", {})
        if "theta" not in out or out["theta"].ndim < 4:
            raise ValueError("--init-mean delta needs a readout rule with a teacher term "
                             "(polynomial_mod or multilinear_mod)")
        # theta[px, py, pw, pm] multiplies x^px y^py w^pw m^pm: delta = x*m - x*y.
        out["theta"] = out["theta"].at[1, 0, 0, 1].set(1.0).at[1, 1, 0, 0].set(-1.0)
        out["eta"] = jnp.full_like(out["eta"], DELTA_START_RATE)
    params["coeffs"] = plastic.evolved_coeffs(net, coeffs)
    return params


def run_config(args) -> dict:
    """What defines a run: resuming with anything different is refused."""
    # Chunking changes memory, not results, so a resumed run may choose it afresh. The
    # schedules and keys depend only on the generation index, so a finished run resumed
    # with more --generations equals one run for that many from the start.
    keys = [k for k in vars(args) if k not in (
        "resume", "no_plots", "out", "chunk_size", "memory_budget_mb", "generations")]
    return {k: getattr(args, k) for k in sorted(keys)}


def check_resume_config(out_dir: str, config: dict, resume: bool) -> None:
    path = os.path.join(out_dir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        # Keys that no longer define a run (e.g. generations, in older runs) are ignored.
        saved = {k: v for k, v in json.load(f).items() if k in config}
    if resume and saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(
            f"{out_dir} holds a run with a different configuration (differs in: "
            f"{', '.join(changed)}); use another --out or the same flags"
        )


# --- baselines for the report ---------------------------------------------------------


def with_readout_rule(net: plastic.PlasticRNN, rule_name: str) -> plastic.PlasticRNN:
    """The same network with only the readout plastic, under ``rule_name``."""
    return dataclasses.replace(
        net, layer_rules=(("out", rule_name),), granularity="shared", evolve_init=False,
        readout_post="auto", log_rates=False,
    )


def hand_rule_candidates(net: plastic.PlasticRNN):
    """(label, net, params) for the fixed hand rules, over a small grid of eta (and decay)."""
    for eta in HAND_RULE_ETAS:
        hebb = with_readout_rule(net, "hebb")
        yield "Hebb (readout)", hebb, _coeffs(hebb, eta=eta, decay=0.0), {"eta": eta}
        for retention in HAND_RULE_RETENTIONS:
            decay = (1.0 - retention) / eta
            yield (
                "Hebb with decay (readout)", hebb, _coeffs(hebb, eta=eta, decay=decay),
                {"eta": eta, "decay": round(decay, 6)},
            )
        delta = with_readout_rule(net, "delta")
        yield "Delta rule (readout)", delta, _coeffs(delta, eta=eta), {"eta": eta}


def _coeffs(net: plastic.PlasticRNN, **values) -> dict:
    params = plastic.init_params(net, jax.random.key(0))
    coeffs = params["coeffs"]["out"]
    for name, value in values.items():
        coeffs[name] = jnp.full_like(coeffs[name], value)
    return params


def random_coefficients(params: dict, key: jax.Array) -> dict:
    """Every evolved coefficient ~ U(-1, 1) (initial weights kept as they are)."""
    leaves, treedef = jax.tree.flatten(params["coeffs"])
    keys = jax.random.split(key, len(leaves))
    leaves = [jax.random.uniform(k, x.shape, minval=-1.0, maxval=1.0) for k, x in zip(keys, leaves)]
    return {**params, "coeffs": jax.tree.unflatten(treedef, leaves)}


def score(net, task, params, key, split, batch) -> tuple[float, float]:
    nll, acc = evolve.score(net, task, params, key, split, batch)
    return float(nll), float(acc)


def build_report(evolution: evolve.Evolution, evolved_params: dict, eval_batch: int) -> list[dict]:
    """Held-out (test split) comparison of the evolved rule with the baselines.

    Hand rules take their best eta/decay on the validation split, then are
    scored on the test split like everything else.
    """
    net, task = evolution.net, evolution.task
    test_key, valid_key = jax.random.key(777), jax.random.key(778)

    def row(label, row_net, params, note=""):
        nll, acc = score(row_net, task, params, test_key, "test", eval_batch)
        return {"model": label, "test_nll": nll, "test_bits": nll / math.log(2),
                "test_accuracy": acc, "note": note}

    rows = [row("evolved rule", net, evolved_params)]
    frozen = dataclasses.replace(net, layer_rules=())
    rows.append(row("plasticity off", frozen, {"coeffs": {}, **_w0(evolved_params)}))
    draws = [score(net, task, random_coefficients(evolved_params, jax.random.key(1000 + i)),
                   test_key, "test", eval_batch) for i in range(RANDOM_COEFF_DRAWS)]
    nlls, accs = np.array(draws).T
    finite = np.isfinite(nlls)
    rows.append({"model": "random coefficients", "test_nll": float(np.median(nlls)),
                 "test_bits": float(np.median(nlls)) / math.log(2),
                 "test_accuracy": float(np.median(accs)),
                 "note": f"median of {RANDOM_COEFF_DRAWS} draws U(-1,1); {int((~finite).sum())} diverged"})
    best = {}
    for label, hand_net, params, setting in hand_rule_candidates(net):
        nll, _ = score(hand_net, task, params, valid_key, "valid", eval_batch)
        if np.isfinite(nll) and (label not in best or nll < best[label][0]):
            best[label] = (nll, hand_net, params, setting)
    for label, (_, hand_net, params, setting) in best.items():
        rows.append(row(label, hand_net, params, note=f"best on valid: {setting}"))
    return rows + ngram_rows(task, eval_batch=eval_batch)


def ngram_rows(task, fit_batch: int = 4096, eval_batch: int = 512) -> list[dict]:
    """Unigram and bigram (last input token -> target) models fitted on sampled train
    sequences (add-one smoothing), scored on the test split's scored positions."""
    v = task.vocab_size
    inputs, targets, mask = jax.device_get(task.sample(jax.random.key(900), fit_batch, "train"))
    scored = mask > 0
    unigram = np.bincount(targets[scored], minlength=v) + 1.0
    bigram = np.ones((v, v))
    np.add.at(bigram, (inputs[scored], targets[scored]), 1.0)
    unigram, bigram = unigram / unigram.sum(), bigram / bigram.sum(1, keepdims=True)
    inputs, targets, mask = jax.device_get(task.sample(jax.random.key(777), eval_batch, "test"))
    scored = mask > 0
    rows = []
    for label, probs in (("unigram (train-fitted)", unigram[targets[scored]]),
                         ("bigram (train-fitted)", bigram[inputs[scored], targets[scored]])):
        table = unigram[None] if label.startswith("uni") else bigram[inputs[scored]]
        accuracy = np.mean(np.argmax(table, axis=-1) == targets[scored])
        nll = float(-np.mean(np.log(probs)))
        rows.append({"model": label, "test_nll": nll, "test_bits": nll / math.log(2),
                     "test_accuracy": float(accuracy),
                     "note": f"{int(scored.sum())} scored test tokens"})
    return rows


def _w0(params: dict) -> dict:
    return {"w0": params["w0"]} if "w0" in params else {}


def polynomial_terms(theta) -> dict[str, float]:
    """Name every shared polynomial coefficient by its monomial, e.g. theta[1,0,0,1] -> "x*m"."""
    theta = np.asarray(theta)
    names = {}
    for index in np.ndindex(theta.shape[: 4 if theta.ndim >= 4 else 3]):
        factors = [f"{v}^{p}" if p > 1 else v for v, p in zip("xywm", index) if p > 0]
        names["*".join(factors) or "1"] = float(np.mean(theta[index]))
    return names


def delta_sign_pattern(evolved_params: dict) -> str | None:
    """The evolved readout polynomial beside the delta rule eta (m - y) x, largest terms first.

    Both are scaled so their largest |coefficient| is 1 (the rule's eta absorbs scale).
    """
    out = evolved_params["coeffs"].get("out", {})
    if "theta" not in out or np.asarray(out["theta"]).ndim < 4:
        return None
    evolved = polynomial_terms(out["theta"])
    delta = {name: 0.0 for name in evolved} | {"x*m": 1.0, "x*y": -1.0}
    scale = max(abs(v) for v in evolved.values()) or 1.0
    eta = float(np.mean(out["eta"]))
    # With --log-rates, eta and theta share one free scale (only their product acts), so
    # eta alone can drift to 1e-4 with theta at 1e4; the product is what to report.
    lines = [f"Readout rule: evolved polynomial vs the delta rule (effective rate "
             f"eta * max|c| = {eta * scale:.4g}; coefficients scaled to max |c| = 1)", "",
             "| term | evolved | delta rule |", "|---|---|---|"]
    for name in sorted(evolved, key=lambda n: -abs(evolved[n]))[:8]:
        lines.append(f"| {name} | {evolved[name] / scale:+.3f} | {delta[name]:+.0f} |")
    return "\n".join(lines)


def significant_figures(x, digits: int = 4) -> list | float:
    """``x`` as (nested) Python floats rounded to ``digits`` significant figures, so that
    coefficients of 1e-4 and 1e4 both print legibly."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(np.asarray(x)).tolist()


def format_report(rows: list[dict], task) -> str:
    lines = [f"Held-out (test split) in-lifetime prediction on {task.name!r}", "",
             "| model | test NLL (nats) | bits/token | accuracy | note |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['test_nll']:.4f} | {r['test_bits']:.4f} | "
                     f"{r['test_accuracy']:.4f} | {r['note']} |")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------


def save_plots(out_dir: str, history: list[dict], evolution, evolved_params) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens, [r["mean_fitness"] for r in history], label="train: population mean NLL")
    ax.plot(gens, [r["best_fitness"] for r in history], label="train: best member fitness")
    ax.plot(gens, [r["valid_nll"] for r in history], label="held-out: ES mean NLL")
    ax.set_xlabel("generation"), ax.set_ylabel("NLL (nats / scored token)"), ax.legend()
    fig.tight_layout(), fig.savefig(os.path.join(out_dir, "fitness.png"), dpi=120), plt.close(fig)

    coeffs = evolved_params["coeffs"]
    names = [(layer, name) for layer in coeffs for name in coeffs[layer]]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(2.4 * max(len(names), 1), 2.6),
                             squeeze=False)
    for ax, (layer, name) in zip(axes[0], names):
        ax.hist(np.ravel(coeffs[layer][name]), bins=30)
        ax.set_title(f"{layer}: {name}", fontsize=8)
    fig.tight_layout(), fig.savefig(os.path.join(out_dir, "coefficients.png"), dpi=120)
    plt.close(fig)

    inputs, targets, mask = evolution.task.sample(jax.random.key(5), 1, "test")
    _, (w_start, w_end) = plastic.lifetime_logits(evolution.net, evolved_params, jax.random.key(6),
                                                  inputs[0], targets[0], mask[0])
    layers = evolution.net.plastic_layers or ("out",)
    fig, axes = plt.subplots(len(layers), 2, figsize=(7, 3 * len(layers)), squeeze=False)
    for row_axes, layer in zip(axes, layers):
        for ax, w, when in zip(row_axes, (w_start[layer], w_end[layer]), ("start", "end")):
            limit = float(np.max(np.abs(w))) or 1.0  # symmetric, so white is zero
            im = ax.imshow(np.asarray(w), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"W_{layer} at lifetime {when}", fontsize=9), fig.colorbar(im, ax=ax)
    fig.tight_layout(), fig.savefig(os.path.join(out_dir, "weights.png"), dpi=120), plt.close(fig)


# --- main ---------------------------------------------------------------------------


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    task = build_task(args)
    net = build_net(args, task.vocab_size)
    cfg = build_es_config(args)
    evolution = evolve.make_evolution(net, task, cfg, jax.random.key(args.seed),
                                      init_mean=initial_mean(net, args))
    config = run_config(args)
    check_resume_config(args.out, config, args.resume)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)

    n_params = sum(x.size for x in jax.tree.leaves(evolution.solution))
    print(f"plastix ES | task {task.name} (vocab {task.vocab_size}, T={task.seq_len}) | "
          f"rules {dict(net.layer_rules)} {net.granularity} | {cfg.strategy} pop {cfg.population} "
          f"x {cfg.batch} lifetimes | {n_params} evolved parameters | "
          f"{len(evolution.mesh.devices.ravel())} {jax.default_backend()} device(s)", flush=True)

    def on_log(r):
        print(f"gen {r['generation']:5d} | fitness best {r['best_fitness']:.4f} "
              f"mean {r['mean_fitness']:.4f} | acc mean {r['mean_accuracy']:.3f} | held-out NLL "
              f"{r['valid_nll']:.4f} acc {r['valid_accuracy']:.3f} | nonfinite {r['nonfinite']} | "
              f"{r['lifetimes_per_s']:.0f} lifetimes/s", flush=True)

    t0 = time.perf_counter()
    state, history = evolve.evolve(evolution, args.seed, args.generations, out_dir=args.out,
                                   log_every=args.log_every, resume=args.resume, on_log=on_log)
    evolved = jax.device_get(evolution.mean(state))
    rows = build_report(evolution, evolved, args.eval_batch)
    report = format_report(rows, task)
    effective = jax.device_get(plastic.rule_coeffs(net, evolved))  # eta, not log(eta)
    pattern = delta_sign_pattern({"coeffs": effective})
    if pattern is not None:
        report += "\n\n" + pattern
    print("\n" + report)
    print(f"\nevolved coefficients (ES mean): "
          f"{jax.tree.map(significant_figures, effective)}")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"rows": rows, "seconds": time.perf_counter() - t0,
                   "evolved_coeffs": jax.tree.map(lambda x: np.asarray(x).tolist(),
                                                  effective)}, f, indent=1)
    if not args.no_plots:
        save_plots(args.out, history, evolution, evolved)
    print(f"\nwrote {args.out}/: config.json metrics.jsonl checkpoint.msgpack report.md "
          f"report.json" + ("" if args.no_plots else " fitness.png coefficients.png weights.png"))
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
