"""The Python API under bad input: every value is checked where it enters, and a bad one
is a ValueError naming it -- never a silent NaN, a frozen update or a wrong number.

The table below is the API half of the bad-input table (the command-line half is in the
other ``test_reliability_*`` files). The few inputs that are not errors have a documented
meaning, and `test_documented_meanings` checks that they do what the docs say.
"""

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import evolve, masks, metagrad, plastic, rules, runs, tasks, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")
W, PRE, POST = jnp.zeros((3, 4)), jnp.ones(4), jnp.ones(3)
TASK = tasks.get("assoc_retrieval", num_pairs=2, split_sizes=(64, 16, 16))


def update(name, w=W, pre=PRE, post=POST, mod=None, coeffs=None):
    rule = rules.get(name)
    coeffs = rule.default_coeffs if coeffs is None else coeffs
    return rule.update(coeffs, rule.init(w), w, pre, post, mod)


def evaluate(vocab_size, batch_slice=slice(None)):
    net = plastic.PlasticRNN(vocab_size=vocab_size, hidden_size=8)
    inputs, targets, mask = TASK.sample(jax.random.key(0), 4, "train")[:3]
    return plastic.evaluate(net, plastic.init_params(net, jax.random.key(0)),
                            jax.random.key(1), inputs[batch_slice], targets[batch_slice],
                            mask[batch_slice])


HEBB_KEYS = tuple(rules.get("hebb").default_coeffs)
NET = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8)
INPUTS, TARGETS, MASK = TASK.sample(jax.random.key(0), 4, "train")[:3]
LOGITS = jnp.zeros((*TARGETS.shape, TASK.vocab_size))


def evaluate_with(mask=MASK, params=None, net=NET):
    params = plastic.init_params(net, jax.random.key(0)) if params is None else params
    return plastic.evaluate(net, params, jax.random.key(1), INPUTS, TARGETS, mask)


def wrong_shapes(net=NET):
    """``init_params`` of ``net`` with a leading axis of 3 on every leaf."""
    return jax.tree.map(lambda x: jnp.ones((3, *x.shape)), plastic.init_params(net,
                                                                               jax.random.key(0)))


NET_W0 = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8, evolve_init=True)


def narrow_w0():
    """``init_params`` of `NET_W0` with every initial weight matrix cut to 2 columns."""
    params = plastic.init_params(NET_W0, jax.random.key(0))
    return {**params, "w0": {k: v[:, :2] for k, v in params["w0"].items()}}


def tiny_evolution():
    return evolve.make_evolution(NET, TASK, evolve.ESConfig(population=2, batch=2,
                                                            eval_batch=4), jax.random.key(0))

# (id, call, what the one-line message must say)
BAD_CALLS = [
    # rules: the shapes and dtypes a pure update cannot check by its values
    ("unknown rule", lambda: rules.get("no_such"), "unknown rule 'no_such'"),
    ("integer weights", lambda: update("hebb", w=jnp.zeros((3, 4), jnp.int32)),
     "w must be floating point, got int32"),
    ("1-d weights", lambda: update("hebb", w=jnp.zeros(12)), r"w must be \(n_post, n_pre\)"),
    ("pre of the wrong size", lambda: update("oja", pre=jnp.ones(5)), r"expected pre \(4,\)"),
    ("post of the wrong size", lambda: update("oja", post=jnp.ones(2)), r"post \(3,\)"),
    ("mod of the wrong shape", lambda: update("hebb", mod=jnp.ones(7)),
     r"mod must be a scalar or \(3,\)"),
    ("a missing coefficient", lambda: update("ABCD", coeffs={"A": 1.0}),
     r"coeffs must have keys \['A', 'B', 'C', 'D'\]"),
    ("an unknown coefficient",
     lambda: update("hebb", coeffs={**rules.get("hebb").default_coeffs, "zz": 1.0}), "'zz'"),
    ("a coefficient of the wrong shape",
     lambda: update("hebb", coeffs={k: jnp.ones((5, 5)) for k in HEBB_KEYS}),
     r"has shape \(5, 5\)"),
    # the plastic network
    ("vocabulary 0", lambda: plastic.PlasticRNN(vocab_size=0), "vocab_size must be .*got 0"),
    ("a fractional vocabulary", lambda: plastic.PlasticRNN(vocab_size=5.5),
     "vocab_size must be an integer"),
    ("hidden -1", lambda: plastic.PlasticRNN(vocab_size=5, hidden_size=-1),
     "hidden_size must be an integer >= 1, got -1"),
    ("init_scale inf", lambda: plastic.PlasticRNN(vocab_size=5, init_scale=INF),
     "init_scale must be a finite number >= 0, got inf"),
    ("weight_noise nan", lambda: plastic.PlasticRNN(vocab_size=5, weight_noise=NAN),
     "weight_noise must be a finite number >= 0, got nan"),
    ("unknown modulation", lambda: plastic.PlasticRNN(vocab_size=5, modulation="dopamine"),
     "unknown modulation 'dopamine'"),
    ("unknown readout_post", lambda: plastic.PlasticRNN(vocab_size=5, readout_post="x"),
     "unknown readout_post 'x'"),
    ("unknown normalised layer",
     lambda: plastic.PlasticRNN(vocab_size=5, normalise_layers=("zz",)), r"\['zz'\]"),
    ("a vocabulary smaller than the task's", lambda: evaluate(TASK.vocab_size - 1),
     "outside the network's vocabulary"),
    ("one sequence instead of a batch", lambda: evaluate(TASK.vocab_size, 0),
     r"inputs must be \(batch, time\) token ids"),
    # masks, ids and parameters where they enter
    ("an all-zero mask", lambda: evaluate_with(jnp.zeros_like(MASK)), "mask is all zero"),
    ("a negative mask", lambda: evaluate_with(-MASK), "mask holds negative weights"),
    ("a NaN mask", lambda: evaluate_with(MASK * NAN), "mask holds NaN"),
    ("a mask of another shape", lambda: evaluate_with(MASK[:, :3]),
     r"mask \(4, 3\) does not fit the targets \(4, 7\)"),
    ("masked_nll, all-zero mask", lambda: tasks.masked_nll(LOGITS, TARGETS, 0 * MASK),
     "mask is all zero"),
    ("masked_nll, negative mask", lambda: tasks.masked_nll(LOGITS, TARGETS, -MASK),
     "negative weights"),
    ("masked_accuracy, negative mask", lambda: tasks.masked_accuracy(LOGITS, TARGETS, -MASK),
     "negative weights"),
    ("decode -1", lambda: tasks.decode(TASK, [-1, 2]),
     r"token ids -1\.\.2 are outside the vocabulary 0\.\.36"),
    ("decode past the vocabulary", lambda: tasks.decode(TASK, [0, TASK.vocab_size]),
     "outside the vocabulary"),
    ("decode fractional ids", lambda: tasks.decode(TASK, [0.5]), "integer token ids"),
    ("evaluate, coefficients of the wrong shape", lambda: evaluate_with(params=wrong_shapes()),
     r"params\['coeffs'\]\['out'\]: rule 'ABCD_lr': coefficient 'A' has shape \(3,\)"),
    ("score, coefficients of the wrong shape",
     lambda: evolve.score(NET, TASK, wrong_shapes(), jax.random.key(0), "valid", 4),
     r"coefficient 'A' has shape \(3,\); for w \(37, 8\) expected"),
    ("evaluate, initial weights of the wrong shape",
     lambda: evaluate_with(params=narrow_w0(), net=NET_W0),
     r"params\['w0'\]\['in'\] has shape \(8, 2\), this network needs \(8, 37\)"),
    ("evaluate, a matrix missing", lambda: evaluate_with(params={"coeffs": {}}),
     r"params\['coeffs'\] must have the plastic matrices \['out'\], got \[\]"),
    ("evaluate, a key too many",
     lambda: evaluate_with(params={**plastic.init_params(NET, jax.random.key(0)), "w0": {}}),
     r"params must have keys \['coeffs'\]"),
    ("ES start of the wrong shape",
     lambda: evolve.make_evolution(NET, TASK, evolve.ESConfig(population=2), jax.random.key(0),
                                   init_mean=wrong_shapes()), "coefficient 'A' has shape"),
    ("evolve for -3 generations", lambda: evolve.evolve(tiny_evolution(), 0, generations=-3),
     "generations must be an integer >= 0, got -3"),
    ("evolve logging every 0", lambda: evolve.evolve(tiny_evolution(), 0, 2, log_every=0),
     "log_every must be an integer >= 1, got 0"),
    # rule names as a command line gives them
    ("a wrapper given too many numbers", lambda: rules.get("modulated(hebb, 0.5, 0.7)"),
     r"2 number\(s\) after the rule; expected modulated\(<rule>, trace_decay"),
    ("annealed given a number", lambda: rules.get("annealed(hebb, 0.5)"),
     r"expected annealed\(<rule>\)"),
    ("an int hyperparameter given a fraction", lambda: rules.get("krotov(k=2.5)"),
     r"k must be an int, got 2.5; expected krotov\(p: float = 2.0, k: int = 2"),
    ("a bool hyperparameter given 3", lambda: rules.get("polynomial(use_mod=3)"),
     "use_mod must be a bool, got 3"),
    ("a number hyperparameter given text", lambda: rules.get("krotov", k="2"),
     "k must be an int, got '2'"),
    ("a rule nested 3000 deep", lambda: rules.get("modulated(" * 3000 + "hebb" + ")" * 3000),
     "nested 3000 deep, more than 16"),
    ("a rule name that is not text", lambda: rules.get(5), "a rule name must be a string"),
    # the ES outer loop
    *[(f"ES {field} {value}", lambda f=field, v=value: evolve.ESConfig(**{f: v}),
       f"{field} must be a finite number > 0, got {value}")
      for field in ("lr", "sigma") for value in (NAN, INF, 0.0, -0.2)],
    ("ES lr below its floor", lambda: evolve.ESConfig(lr=0.001),
     r"lr_min \(0.01\) must not exceed lr \(0.001\)"),
    ("ES sigma below its floor", lambda: evolve.ESConfig(sigma=0.001),
     r"sigma_min \(0.01\) must not exceed sigma \(0.001\)"),
    ("ES sigma_min -1", lambda: evolve.ESConfig(sigma_min=-1.0), "sigma_min must be"),
    ("ES l2 nan", lambda: evolve.ESConfig(l2_penalty=NAN), "l2_penalty must be .*got nan"),
    ("ES l2 -1", lambda: evolve.ESConfig(l2_penalty=-1.0), "l2_penalty must be .*got -1.0"),
    ("ES odd population", lambda: evolve.ESConfig(population=5),
     "population must be even for antithetic sampling"),
    ("ES population 0", lambda: evolve.ESConfig(population=0), "population must be"),
    ("ES population True", lambda: evolve.ESConfig(population=True),
     "population must be .*got True"),
    ("ES lr as text", lambda: evolve.ESConfig(lr="0.1"), "lr must be .*got '0.1'"),
    ("ES batch 0", lambda: evolve.ESConfig(batch=0), "batch must be an integer >= 1"),
    ("ES eval_batch 0", lambda: evolve.ESConfig(eval_batch=0), "eval_batch must be"),
    ("ES lr_decay 0", lambda: evolve.ESConfig(lr_decay=0.0), r"lr_decay must be .*\(0, 1\]"),
    ("ES lr_decay 2", lambda: evolve.ESConfig(lr_decay=2.0), "lr_decay must be .*got 2.0"),
    ("ES chunk_size 0", lambda: evolve.ESConfig(chunk_size=0), "chunk_size must be"),
    ("ES memory_budget -1", lambda: evolve.ESConfig(memory_budget=-1), "memory_budget must"),
    ("ES unknown strategy", lambda: evolve.ESConfig(strategy="NoSuch"),
     "unknown ES strategy 'NoSuch'"),
    ("ES unknown optimizer", lambda: evolve.ESConfig(optimizer="lion2"), "'lion2'"),
    ("ES unknown floor_mode", lambda: evolve.ESConfig(floor_mode="zz"), "floor_mode 'zz'"),
    ("ES unknown fitness shaping", lambda: evolve.ESConfig(fitness_shaping="zz"),
     "fitness_shaping 'zz'"),
    ("ES unknown l2_reduce", lambda: evolve.ESConfig(l2_reduce="zz"), "l2_reduce 'zz'"),
    # the gradient outer loop
    ("gradient lr nan", lambda: metagrad.GradConfig(learning_rate=NAN),
     "learning_rate must be a finite number > 0, got nan"),
    ("gradient lr 0", lambda: metagrad.GradConfig(learning_rate=0.0), "learning_rate must"),
    ("gradient clip 0", lambda: metagrad.GradConfig(clip_norm=0.0), "clip_norm must"),
    ("gradient clip -1", lambda: metagrad.GradConfig(clip_norm=-1.0), "got -1.0"),
    ("gradient lr below its floor",
     lambda: metagrad.GradConfig(learning_rate=0.01, lr_min=0.1), "must not exceed"),
    ("gradient batch 0", lambda: metagrad.GradConfig(batch=0), "batch must be"),
    ("gradient truncation 0", lambda: metagrad.GradConfig(truncation=0), "truncation must"),
    ("gradient checkpoint_every 0", lambda: metagrad.GradConfig(checkpoint_every=0),
     "checkpoint_every must"),
    ("gradient l2 inf", lambda: metagrad.GradConfig(l2_penalty=INF), "l2_penalty must"),
    # the gradient-trained baselines
    ("train batch 0", lambda: train.TrainConfig(batch_size=0), "batch_size must be"),
    ("train lr nan", lambda: train.TrainConfig(learning_rate=NAN), "learning_rate must"),
    ("train clip 0", lambda: train.TrainConfig(clip_norm=0.0), "clip_norm must"),
    ("train clip -1", lambda: train.TrainConfig(clip_norm=-1.0), "clip_norm must"),
    ("train steps 0", lambda: train.TrainConfig(steps=0), "steps must be"),
    ("train log_every 0", lambda: train.TrainConfig(log_every=0), "log_every must be"),
    ("train eval_batches 0", lambda: train.TrainConfig(eval_batches=0), "eval_batches must"),
    ("train checkpoints off the logging grid",
     lambda: train.TrainConfig(log_every=30, checkpoint_every=100),
     r"must be a multiple of log_every \(30\)"),
    # tasks
    ("unknown task", lambda: tasks.get("no_such"), "unknown task 'no_such'"),
    ("a setting the task does not take", lambda: tasks.get("assoc_retrieval", seq_len=5),
     "takes no setting 'seq_len'"),
    ("0 pairs", lambda: tasks.get("assoc_retrieval", num_pairs=0), "num_pairs .*got 0"),
    ("-3 pairs", lambda: tasks.get("assoc_retrieval", num_pairs=-3), "got -3"),
    ("an empty split", lambda: tasks.get("assoc_retrieval", split_sizes=[0, 1, 1]),
     "split_sizes must be 3 positive ints"),
    ("unknown split", lambda: TASK.sample(jax.random.key(0), 4, "dev"), "unknown split 'dev'"),
    ("a batch of none", lambda: TASK.sample(jax.random.key(0), 0, "train"),
     "batch must be an integer >= 1, got 0"),
    ("a missing corpus", lambda: tasks.get("text", path="/nonexistent/corpus.txt"),
     "/nonexistent/corpus.txt"),
    # Hebbian masks
    ("mask rate nan", lambda: masks.HebbianMasking(("Dense_0",), rate=NAN), "rate must be"),
    ("mask thresholds crossed",
     lambda: masks.HebbianMasking(("Dense_0",), prune_below=1.0, regrow_above=-1.0),
     "prune_below <= regrow_above"),
    ("mask limit 0", lambda: masks.HebbianMasking(("Dense_0",), limit=0.0), "limit=0.0"),
    ("unknown mask agreement", lambda: masks.HebbianMasking(("Dense_0",), agreement="zz"),
     "agreement must be one of"),
    ("a mask of no layers", lambda: masks.HebbianMasking(()), "at least one"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_api_input_is_a_value_error_naming_it(call, message):
    # FileNotFoundError (a missing corpus) is an OSError, which the scripts report in one
    # line too (`plastix.cli.run`).
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        call()
    text = str(caught.value)
    assert len(text.splitlines()) == 1, text
    assert re.search(message, text), text


def test_damaged_run_files_are_named(tmp_path):
    log = tmp_path / runs.METRICS
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(log))}:2 is not a JSON record"):
        runs.MetricsLog(log).read()
    (tmp_path / runs.CONFIG).write_text("{oops")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / runs.CONFIG))} is damaged"):
        runs.read_config(tmp_path)
    (tmp_path / runs.CHECKPOINT).write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / runs.CHECKPOINT))):
        runs.load_checkpoint(tmp_path / runs.CHECKPOINT, {"w": np.zeros(3)})


@pytest.mark.parametrize("content, problem", [
    ("{oops", "not JSON"),
    ("null", "null, not a JSON object"),
    ("[1, 2]", "[1, 2], not a JSON object"),
    ('{"seed": 0}', "no 'part'"),
    (('{"part": "lm", "seed": "0", "method": "dense", "seconds": 1, "valid": 1, "test": 1, '
      '"sparsity": 0}'), "'seed' is \"0\""),
    (('{"part": "lm", "seed": 0, "method": "dense", "seconds": 1, "valid": true, "test": 1, '
      '"sparsity": 0}'), "'valid' is true"),
])
def test_damaged_cell_results_are_named(content, problem, tmp_path):
    """A cell's damaged result.json is named with what is wrong and how to rerun the cell,
    by each experiment that collects cells, not a KeyError later on."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import compare_outer
    import hebbian_masks
    import text

    (tmp_path / "result.json").write_text(content)
    path = re.escape(str(tmp_path / "result.json"))
    with pytest.raises(ValueError, match=rf"^{path} is damaged \({re.escape(problem)}\): "
                                         rf"delete it to run that cell again$"):
        hebbian_masks.read_result(str(tmp_path))
    with pytest.raises(ValueError, match=rf"^{path} is damaged"):
        compare_outer.finished_result(str(tmp_path / "result.json"), {})
    with pytest.raises(ValueError, match=rf"^{path} is damaged"):
        text.read_result(None, str(tmp_path), {})
    assert hebbian_masks.read_result(str(tmp_path / "none")) is None


def test_a_text_cell_result_with_damaged_summaries_is_named(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import text

    (tmp_path / "result.json").write_text('{"lengths": {"100": {"windows": 8, "bits": 2.0}}}')
    with pytest.raises(ValueError, match="a summary of length 100 lacks its figures"):
        text.read_result(None, str(tmp_path), {})


def test_documented_meanings():
    """The inputs that are not errors, and what the docs say they mean."""
    # No plastic layer is the "plasticity off" baseline: the weights stay as drawn.
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8, layer_rules=())
    inputs, targets, mask = TASK.sample(jax.random.key(0), 1, "train")[:3]
    _, (w_start, w_end) = plastic.lifetime_logits(
        net, plastic.init_params(net, jax.random.key(0)), jax.random.key(1),
        inputs[0], targets[0], mask[0])  # one lifetime
    for layer in w_start:
        np.testing.assert_array_equal(w_start[layer], w_end[layer])
    # noise_table=0 is fresh Gaussian noise, which every strategy takes; a table is
    # Open_ES's alone.
    evolve.ESConfig(strategy="CMA_ES", noise_table=0)
    with pytest.raises(ValueError, match="noise_table"):
        evolve.ESConfig(strategy="CMA_ES", noise_table=1024)
    # A seed is any int32, negative ones included; past that, jax would wrap it.
    train.TrainConfig(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        train.TrainConfig(seed=2**31)
    # A rule is a pure function: a NaN activity gives a NaN update, which the ES loop
    # contains (`tests/test_evolve.py::test_divergent_plastic_weights_never_poison_the_es_state`).
    dw, _ = update("hebb", pre=jnp.full(4, NAN))
    assert np.isnan(np.asarray(dw)).all()
    # Zero generations run none: the starting state and an empty history.
    evolution = tiny_evolution()
    state, history = evolve.evolve(evolution, 0, generations=0)
    assert history == []
    np.testing.assert_array_equal(np.asarray(evolution.strategy.get_mean(state)),
                                  np.asarray(evolution.init(jax.random.split(
                                      jax.random.key(0))[0]).mean))
    # Under jit a mask's values are unknown: only its shape is checked there.
    assert float(jax.jit(tasks.masked_nll)(LOGITS, TARGETS, 0 * MASK)) == 0.0
    # An empty sequence decodes to nothing; a mask may weigh positions (not only 0 / 1).
    assert tasks.decode(TASK, []) == ""
    assert np.isfinite(float(tasks.masked_nll(LOGITS, TARGETS, 2.0 * MASK)))
