"""plastix against PyTorch on the gradient paths, in one invocation.

Two workloads, each timed as whole training steps per second (forward, backward and the
optimiser update: Adam after clipping the gradient's global norm to 1), compilation and
warm-up excluded, the best of ``--repeats`` timed runs:

* ``fast_weights``: RNN-LN-FW (Ba et al. 2016) on their associative retrieval task, as
  ``python experiments/fast_weights.py train --model rnn-ln-fw`` trains it (batch 128,
  H = 50, S = 1 inner step, embedding and readout of 100, Adam 1e-3). plastix is timed on
  the compiled step `train.fit` runs (``train._compile_train_step``: the batch sampled on
  the device inside it); PyTorch on a model written as a careful user would (the input
  projection of every step computed at once before the loop over time, ``bmm`` for the
  fast-weight read, ``nn.LayerNorm``, ``torch.optim.Adam``, ``clip_grad_norm_``), given
  batches drawn beforehand (no sampling cost), started from plastix's initial weights.
* ``meta_gradient``: meta-learning a plasticity rule by gradient through the lifetime, as
  ``python experiments/es_abcd.py --outer gradient`` runs it (its default network: a
  tanh RNN of 32 units whose readout learns in-lifetime by ABCD_lr, 5 learned
  coefficients; associative retrieval, T = 11; batch 32 lifetimes; Adam 0.01). plastix is
  timed on the block of updates `metagrad.descend` runs (``MetaGradient.run``, 10
  updates, as between two logs); PyTorch as Miconi et al. (2018)'s differentiable
  plasticity is written: the plastic readout updated by the rule inside the forward pass,
  the rule's coefficients learned by backpropagation through the lifetime, fresh random
  initial weights drawn every update.

PyTorch runs eager and, unless ``--no-compile``, with ``torch.compile`` on the loss (its
backward compiled with it); each with the faster of 1 and all threads; the faster of the
two is the one compared. Both sides' losses are checked to agree on the same weights and
batch (fast weights: the loss, and the loss after one update; meta-gradient: the loss and
its gradient). Prints one JSON line.

    pip install torch==2.13.0   # optional benchmark dependency (CPU build)
    python benchmarks/compare_torch_gradient.py [--workloads fast_weights meta_gradient]

PyTorch is imported only once the flags are checked: ``--help`` and a refused flag need
none.
"""

from __future__ import annotations

import json
import os
import statistics
import time

# First: es_abcd sets the device policy of the meta-gradient path before JAX starts.
from plastix.experiments import es_abcd  # isort: skip
import jax  # noqa: E402
import numpy as np  # noqa: E402

from plastix import checks, cli, metagrad, plastic, train  # noqa: E402
from plastix.experiments import fast_weights  # noqa: E402

WORKLOADS = ("fast_weights", "meta_gradient")
torch = None  # the module, once `import_torch` has run


def import_torch():
    """Import PyTorch (an optional dependency: see the module docstring); ValueError
    saying how to install it if it is missing."""
    global torch
    try:
        import torch as module
    except ImportError:
        raise ValueError("benchmarks/compare_torch_gradient.py needs PyTorch, which is not "
                         "installed: pip install 'plastix[bench]' (or pip install torch)"
                         ) from None
    torch = module
    return module


def tensor(x, dtype=None):
    """A writable torch copy of a JAX or NumPy array."""
    out = torch.from_numpy(np.array(x))
    return out if dtype is None else out.to(dtype)


def best_and_median(fn, steps: int, repeats: int) -> dict:
    """Steps per second of ``fn(steps)`` (which runs ``steps`` steps and waits for them)
    over ``repeats`` timed runs, after one warm-up run."""
    fn(steps)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(steps)
        rates.append(steps / (time.perf_counter() - start))
    return {"steps_per_s": max(rates), "median_steps_per_s": statistics.median(rates)}


def masked_nll(logits, targets, mask):
    """``-sum(mask * log_softmax(logits)[target]) / max(sum(mask), 1)`` (`tasks.masked_nll`)."""
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                            reduction="none").view_as(mask)
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


# --- fast weights ----------------------------------------------------------------------------


def torch_fast_weights_model(vocab: int, hidden: int, form: str, decay=0.95, fast_lr=0.5,
                             inner_steps: int = 1, embed: int = 100, readout: int = 100):
    """RNN-LN-FW in PyTorch (`plastix.models.FastWeightRNNCell`, `TokenModel`)."""
    nn, F = torch.nn, torch.nn.functional

    class FastWeightsRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.recurrent = nn.Linear(hidden, hidden, bias=False)
            self.input = nn.Linear(embed, hidden)
            self.layer_norm = nn.LayerNorm(hidden, eps=1e-6)
            self.readout = nn.Linear(hidden, readout)
            self.logits = nn.Linear(readout, vocab)

        def read(self, memory, q, t):
            """A(t) q: the explicit matrix, or attention over the past states."""
            if form == "explicit":
                return torch.bmm(memory, q.unsqueeze(-1)).squeeze(-1)
            if t == 0:
                return torch.zeros_like(q)
            past = torch.stack(memory, 1)                                # (B, t, H)
            age = torch.arange(t - 1, -1, -1, dtype=q.dtype)
            scores = torch.einsum("bsh,bh->bs", past, q) * (fast_lr * decay ** age)
            return torch.einsum("bsh,bs->bh", past, scores)

        def forward(self, tokens):
            batch, length = tokens.shape
            drive = self.input(self.embed(tokens))        # C x(t) + b, every step at once
            h = drive.new_zeros(batch, hidden)
            memory = drive.new_zeros(batch, hidden, hidden) if form == "explicit" else []
            states = []
            for t in range(length):
                z = self.recurrent(h) + drive[:, t]
                h = F.relu(z)
                for _ in range(inner_steps):
                    h = F.relu(self.layer_norm(z + self.read(memory, h, t)))
                if form == "explicit":
                    memory = decay * memory + fast_lr * h.unsqueeze(2) * h.unsqueeze(1)
                else:
                    memory = memory + [h]
                states.append(h)
            return self.logits(F.relu(self.readout(torch.stack(states, 1))))

    return FastWeightsRNN()


def load_flax_params(model, params) -> None:
    """Copy a plastix `TokenModel`'s parameters into the PyTorch model (kernels transposed)."""
    p = params["params"]
    cell = p["cell"]
    values = {
        "embed.weight": p["embed"]["embedding"],
        "recurrent.weight": cell["SlowTransition_0"]["recurrent"]["kernel"].T,
        "input.weight": cell["SlowTransition_0"]["input"]["kernel"].T,
        "input.bias": cell["SlowTransition_0"]["input"]["bias"],
        "layer_norm.weight": cell["LayerNorm_0"]["scale"],
        "layer_norm.bias": cell["LayerNorm_0"]["bias"],
        "readout.weight": p["readout"]["kernel"].T, "readout.bias": p["readout"]["bias"],
        "logits.weight": p["logits"]["kernel"].T, "logits.bias": p["logits"]["bias"],
    }
    model.load_state_dict({k: tensor(v) for k, v in values.items()})


def torch_trainer(model, loss_fn, learning_rate: float, clip: float):
    """``step(*batch) -> loss``: Adam on the clipped gradient of ``loss_fn(model, *batch)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def step(*batch):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, *batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss

    return step


def time_torch(make_step, batches, steps: int, repeats: int) -> dict:
    """Steps/s of a fresh trainer (``make_step()``) cycling through ``batches``, with the
    faster of 1 and all threads (on a busy machine spinning OpenMP threads can make two
    threads slower than one: a careful user picks the faster)."""
    results = {}
    for threads in sorted({1, os.cpu_count()}):
        torch.set_num_threads(threads)
        step = make_step()

        def run(n):
            for i in range(n):
                loss = step(*batches[i % len(batches)])
            return float(loss.detach())

        results[threads] = best_and_median(run, steps, repeats)
    threads = max(results, key=lambda n: results[n]["steps_per_s"])
    torch.set_num_threads(threads)
    return {"threads": threads, **results[threads]}


def torch_versions(make_step, batches, args) -> dict:
    """Eager and compiled PyTorch timings, and which is faster."""
    out = {"eager": time_torch(lambda: make_step(False), batches, args.torch_steps,
                               args.repeats)}
    if args.compile:
        try:
            out["compiled"] = time_torch(lambda: make_step(True), batches, args.torch_steps,
                                         args.repeats)
        except Exception as e:  # noqa: BLE001 -- reported, not fatal: eager still counts
            out["compiled"] = {"error": f"{type(e).__name__}: {cli.one_line(e)[:300]}"}
    timed = {k: v for k, v in out.items() if "steps_per_s" in v}
    out["fastest"] = max(timed, key=lambda k: timed[k]["steps_per_s"])
    return out


def fast_weights_workload(args) -> dict:
    experiment = {"model": fast_weights.FAST_WEIGHTS, "hidden": args.hidden,
                  "model_hyper": {"form": args.form},
                  "task": fast_weights.TASK_CONFIGS["assoc_retrieval"]}
    model, task = fast_weights.build(experiment)
    config = train.TrainConfig(steps=1, batch_size=args.batch, seed=args.seed)
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm)
    init_key, data_key, _ = jax.random.split(jax.random.key(config.seed), 3)
    start = train.init_state(init_key, model, train.example_inputs(task), optimizer)
    # The compiled step `train.fit` runs, and the batches it draws.
    train_step = train._compile_train_step(model, task, config.learning_rate,
                                           config.clip_norm, config.batch_size, None)
    state = start

    def run_plastix(n):
        nonlocal state
        for _ in range(n):
            state, metrics = train_step(state, data_key)
        jax.block_until_ready(state)

    plastix = best_and_median(run_plastix, args.steps, args.repeats)
    sample = lambda i: task.sample(jax.random.fold_in(data_key, i), config.batch_size, "train")
    host = [sample(i) for i in range(min(args.torch_steps, 32))]
    batches = [(tensor(x, torch.long), tensor(y, torch.long), tensor(m)) for x, y, m in host]

    def make_model():
        net = torch_fast_weights_model(task.vocab_size, args.hidden, args.form)
        load_flax_params(net, start.params)
        return net

    loss_of = lambda net, x, y, m: masked_nll(net(x), y, m)

    def make_step(compiled):
        fn = torch.compile(loss_of) if compiled else loss_of
        return torch_trainer(make_model(), fn, config.learning_rate, config.clip_norm)

    # Agreement: the loss of the start, and after one update, on the same batches.
    update = jax.jit(train.make_update(model, optimizer))
    loss0 = float(train.loss_and_metrics(start.params, model, host[0])[0])
    after, _ = update(start, host[0])
    loss1 = float(train.loss_and_metrics(after.params, model, host[1 % len(host)])[0])
    net = make_model()
    step = torch_trainer(net, loss_of, config.learning_rate, config.clip_norm)
    torch_loss0 = float(step(*batches[0]).detach())
    with torch.no_grad():
        torch_loss1 = float(loss_of(net, *batches[1 % len(batches)]))
    torch_runs = torch_versions(make_step, batches, args)
    fastest = torch_runs[torch_runs["fastest"]]["steps_per_s"]
    return {"model": "rnn-ln-fw", "form": args.form, "hidden": args.hidden,
            "batch": config.batch_size, "seq_len": task.seq_len, "vocab": task.vocab_size,
            "plastix": plastix, "torch": torch_runs,
            "speedup_vs_fastest_torch": plastix["steps_per_s"] / fastest,
            "loss": {"plastix": [loss0, loss1], "torch": [torch_loss0, torch_loss1]},
            "max_abs_loss_diff": max(abs(loss0 - torch_loss0), abs(loss1 - torch_loss1))}


# --- meta-gradient through a plastic lifetime ---------------------------------------------


def teaching_signal(inputs, targets, mask):
    """`plastic.teaching_signal` in PyTorch: the scored target, else the next token; the
    last unscored step teaches nothing."""
    next_inputs = torch.cat([inputs[:, 1:], inputs[:, -1:]], 1)
    scored = mask > 0
    teacher = torch.where(scored, targets, next_inputs)
    has_next = torch.arange(inputs.shape[1]) < inputs.shape[1] - 1
    return teacher, (scored | has_next).float()


def plastic_lifetime_loss(coeffs, tokens, targets, mask, w_in, w_rec, w_out):
    """Mean NLL of B lifetimes of the plastic network (Miconi et al. 2018's form).

    h(t) = tanh(W_in x(t) + W_rec h(t-1)); p(t) = softmax(W_out(t) h(t));
    W_out(t+1) = W_out(t) + eta (A y x^T + B x + C y + D), x = h(t), y = the teacher's
    one-hot (`plastix.rules.abcd`); W (B, n_post, n_pre) drawn per lifetime, the rule's
    coefficients ``coeffs`` (scalar tensors) learned through every update.
    """
    F = torch.nn.functional
    teacher, teach_on = teaching_signal(tokens, targets, mask)
    vocab = w_out.shape[1]
    columns = w_in.transpose(1, 2)                      # row j: column j of W_in
    rows = torch.arange(tokens.shape[0])
    h = w_rec.new_zeros(w_rec.shape[:2])
    a, b, c, d = (coeffs["eta"] * coeffs[k] for k in "ABCD")
    nll = []
    for t in range(tokens.shape[1]):
        h = torch.tanh(columns[rows, tokens[:, t]] + torch.bmm(w_rec, h.unsqueeze(-1))[..., 0])
        logits = torch.bmm(w_out, h.unsqueeze(-1))[..., 0]
        nll.append(F.cross_entropy(logits, targets[:, t], reduction="none"))
        y = (F.one_hot(teacher[:, t], vocab) * teach_on[:, t, None]).unsqueeze(-1)
        w_out = w_out + (a * y + b) * h.unsqueeze(1) + (c * y + d)
    return (torch.stack(nll, 1) * mask).sum() / mask.sum().clamp(min=1.0)


def meta_gradient_workload(args) -> dict:
    cfg, _ = es_abcd.parse_config(["--outer", "gradient", "--hidden", str(args.meta_hidden),
                                   "--batch", str(args.meta_batch), "--seed", str(args.seed)])
    outer = es_abcd.make_outer(cfg)
    net, task = outer.net, outer.task
    if plastic.as_network(net).plastic_matrices != ("out",) or net.rule("out").name != "ABCD_lr":
        raise ValueError("the meta-gradient comparison is written for es_abcd's default "
                         "network (only the readout plastic, under ABCD_lr)")
    _, run_key = jax.random.split(jax.random.key(cfg.seed))
    block = cfg.log_every
    state = outer.place(outer.init())

    def run_plastix(n):
        nonlocal state
        for first in range(0, n, block):
            state, _ = outer.run(state, run_key, first, block)
        jax.block_until_ready(state)

    steps = max(block, args.steps // block * block)
    plastix = best_and_median(run_plastix, steps, args.repeats)

    batch = cfg.grad.batch
    host = [task.sample(jax.random.fold_in(run_key, i), batch, "train")
            for i in range(min(args.torch_steps, 32))]
    batches = [(tensor(x, torch.long), tensor(y, torch.long), tensor(m)) for x, y, m in host]
    shapes = plastic.as_network(net).weight_shapes()
    scale = net.init_scale
    start = outer.start["coeffs"]["out"]

    def make_step(compiled):
        coeffs = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(tensor(v).float()) for k, v in start.items()})
        loss_fn = torch.compile(plastic_lifetime_loss) if compiled else plastic_lifetime_loss

        def loss(coeffs, tokens, targets, mask):
            w0 = [scale * (2 * torch.rand(batch, *shapes[k]) - 1) for k in ("in", "rec", "out")]
            return loss_fn(coeffs, tokens, targets, mask, *w0)

        return torch_trainer(coeffs, loss, cfg.grad.learning_rate, cfg.grad.clip_norm)

    # Agreement: the loss and its gradient on the same batch and initial weights.
    draws = plastic.lifetime_draws(net, jax.random.key(args.seed + 1), batch)
    nll, _, grads = metagrad.loss_and_grad(net, outer.start, draws, host[0])
    coeffs = {k: torch.tensor(float(v), requires_grad=True) for k, v in start.items()}
    torch_nll = plastic_lifetime_loss(coeffs, *batches[0],
                                      *(tensor(draws.w0[k]) for k in ("in", "rec", "out")))
    torch_nll.backward()
    grad_diff = max(abs(float(grads["coeffs"]["out"][k]) - float(coeffs[k].grad))
                    for k in coeffs)
    torch_runs = torch_versions(make_step, batches, args)
    fastest = torch_runs[torch_runs["fastest"]]["steps_per_s"]
    return {"network": "es_abcd default (readout ABCD_lr)", "hidden": net.hidden_size,
            "batch": batch, "seq_len": task.seq_len, "vocab": task.vocab_size,
            "updates_per_block": block, "devices": len(outer.mesh.devices.ravel()),
            "plastix": plastix, "torch": torch_runs,
            "speedup_vs_fastest_torch": plastix["steps_per_s"] / fastest,
            "loss": {"plastix": float(nll), "torch": float(torch_nll.detach())},
            "max_abs_loss_diff": abs(float(nll) - float(torch_nll.detach())),
            "max_abs_grad_diff": grad_diff}


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--steps", type=checks.SIZE, default=100,
                   help="plastix training steps per timed run")
    p.add_argument("--torch-steps", type=checks.SIZE, default=20,
                   help="PyTorch training steps per timed run")
    p.add_argument("--repeats", type=checks.SIZE, default=3, help="timed runs of each")
    p.add_argument("--hidden", type=checks.SIZE, default=50, help="fast weights: H")
    p.add_argument("--batch", type=checks.SIZE, default=128, help="fast weights: batch")
    p.add_argument("--form", default="explicit", choices=("explicit", "attention"),
                   help="fast weights: the form of the cell (both sides)")
    p.add_argument("--meta-hidden", type=checks.SIZE, default=32,
                   help="meta-gradient: hidden units")
    p.add_argument("--meta-batch", type=checks.SIZE, default=32,
                   help="meta-gradient: lifetimes per update")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="time PyTorch eager only (torch.compile takes minutes)")
    p.add_argument("--seed", type=checks.SEED, default=0)
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import_torch()
    record = {"benchmark": "compare_torch_gradient", "torch": torch.__version__,
              "jax": jax.__version__, "backend": jax.default_backend(),
              "cpus": os.cpu_count(), "statistic": "best of repeats (median beside)"}
    workloads = {"fast_weights": fast_weights_workload, "meta_gradient": meta_gradient_workload}
    for name in args.workloads:
        record[name] = workloads[name](args)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run(main)
