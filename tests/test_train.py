"""collapse_jax.train: the data, the three precision presets (checked in the jaxpr and the
state's dtypes, not assumed), the AdamW step against a float64 numpy AdamW, the loss against
the float64 reference forward, checkpoints, determinism and resuming, the collapse probe."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax import config, precision, train

try:
  from reference import bits, reference_forward_f64
except ImportError:
  from tests.reference import bits, reference_forward_f64

CFG = config.DecoderConfig(num_layers=1, d_model=16, num_heads=2, vocab_size=train.vocab_size(8),
                           max_len=300, norm="rmsnorm")
L = 4
PRESETS = list(train.PRESETS)


def _opt(steps=20, **kw):
  return train.Optimizer(steps=steps, warmup=2, **kw)


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def _same_bits(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(bits(x) if x.dtype.kind in "fV" else x,
                                  bits(y) if y.dtype.kind in "fV" else y)


# -- data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", train.TASKS)
def test_batches_answer_their_task_and_are_left_padded(task):
  rng = np.random.default_rng(0)
  b = train.make_batch(task, rng, [1, 3, 6, 6], width=9)
  for i, n in enumerate(b.n):
    real = b.tokens[i][b.valid[i]]
    assert b.valid[i].sum() == n + 1 and not b.valid[i][:9 - n - 1].any()  # pads on the left
    np.testing.assert_array_equal(b.positions[i][b.valid[i]], np.arange(n + 1))
    assert real[0] == train.BOS and set(real[1:]) <= {train.ZERO, train.ONE}
    digits = real[1:] - train.ZERO
    assert b.count[i] == digits.sum()
    want = {"count_ones": train.COUNT0 + digits.sum(), "copy_first": train.ZERO + digits[0],
            "copy_last": train.ZERO + digits[-1]}[task]
    assert b.answer[i] == want


def test_counts_cover_zero_to_n_and_batches_depend_only_on_seed_and_step():
  b = train.make_batch("count_ones", np.random.default_rng(1), np.full(400, 5))
  assert set(b.count.tolist()) == set(range(6))  # c uniform in 0..n
  one, again = train.train_batch("count_ones", 3, 7, 8, L), train.train_batch("count_ones", 3, 7, 8, L)
  for x, y in zip(one, again):
    np.testing.assert_array_equal(x, y)
  other = train.train_batch("count_ones", 3, 8, 8, L)
  assert not np.array_equal(one.tokens, other.tokens)
  assert one.tokens.shape == (8, L + 1) and 1 <= one.n.min() and one.n.max() <= L


# -- precision presets -----------------------------------------------------------------------

def _dots(jaxpr) -> set:
  """(operand dtypes, output dtype) of every dot_general in a jaxpr, sub-jaxprs (pjit,
  custom_jvp, ...) included."""
  out = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.add((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out |= _dots(inner)
  return out


BF16_FWD = {(("bfloat16", "bfloat16"), "float32")}
# the backward's dots: the f32 cotangent of the f32 accumulator times a stored bf16 operand
BF16_BWD = BF16_FWD | {(("float32", "bfloat16"), "float32")}
F32 = {(("float32", "float32"), "float32")}


@pytest.mark.parametrize("name,fwd,bwd,master,moments", [
    ("float32", F32, F32, "float32", "float32"),
    ("bfloat16", BF16_FWD, BF16_BWD, "float32", "float32"),
    ("bfloat16_weights", BF16_FWD, BF16_BWD, "bfloat16", "bfloat16")])
def test_presets_put_each_tensor_where_they_say(name, fwd, bwd, master, moments):
  """The forward's matmuls take the preset's operand dtype (bf16 x bf16 -> f32 in both bf16
  presets); in the backward every matmul has a stored bf16 operand and an f32 cotangent (no
  f32 x f32 dot: nothing runs in f32 that the forward ran in bf16); master weights and Adam's
  moments keep their dtypes through a step. Read from the jaxprs and the state, not from the
  preset's description."""
  tp, opt = train.get_preset(name), _opt()
  state = train.init_state(CFG, tp, opt, 0)
  batch = train.train_batch("count_ones", 0, 0, 8, L)
  loss = lambda p: train.loss_fn(CFG, tp, p, batch)[0]
  assert _dots(jax.make_jaxpr(loss)(state.params).jaxpr) == fwd
  assert _dots(jax.make_jaxpr(jax.grad(loss))(state.params).jaxpr) == bwd
  res = train.forward_logits(CFG, tp, state.params, batch.tokens, batch.positions, batch.valid,
                             collect=("residual",))["residual"]
  assert str(res.dtype) == tp.policy.storage_dtype.name
  state, m = train.step_fn(CFG, tp, opt)(state, batch)
  assert {str(x.dtype) for x in _leaves(state.params)} == {master}
  mu_nu = [x for x in _leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert mu_nu and {str(x.dtype) for x in mu_nu} == {moments}
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  assert tp.describe()["master_dtype"] == master and tp.describe()["moment_dtype"] == moments


def test_mixed_preset_gradients_come_back_through_the_bf16_cast():
  """bfloat16 (mixed): the f32 master weights are rounded to bf16 inside the differentiated
  function, so their gradient is the bf16 cotangent upcast: every value is a bf16 number.
  Under float32 they are not (a check that the test can fail)."""
  batch = train.train_batch("count_ones", 0, 0, 16, L)
  for name, expect_bf16 in (("bfloat16", True), ("float32", False)):
    tp = train.get_preset(name)
    state = train.init_state(CFG, tp, _opt(), 0)
    g = jax.jit(jax.grad(lambda p: train.loss_fn(CFG, tp, p, batch)[0]))(state.params)
    vals = np.concatenate([np.asarray(x, np.float32).ravel() for x in _leaves(g)])
    assert vals.dtype == np.float32
    exact = np.array_equal(vals, vals.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert exact == expect_bf16, name


@pytest.mark.parametrize("name,tol", [("float32", 1e-5), ("bfloat16", 5e-2),
                                      ("bfloat16_weights", 5e-2)])
def test_loss_matches_the_float64_reference(name, tol):
  """The training loss (cross-entropy of the last row) against numpy float64 on the float64
  reference forward of the same (left-padded) batch and master weights; relative tolerance:
  1e-5 in float32, 5e-2 for the bf16 forward."""
  tp = train.get_preset(name)
  state = train.init_state(CFG, tp, _opt(), 1)
  batch = train.train_batch("count_ones", 1, 0, 16, L)
  loss = float(train.loss_fn(CFG, tp, state.params, batch)[0])
  ref = reference_forward_f64(CFG, jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64),
                                                          state.params), batch.tokens,
                              positions=batch.positions, key_valid=batch.valid)["logits"][:, -1]
  logp = ref - ref.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  want = -logp[np.arange(len(batch.answer)), batch.answer].mean()
  assert abs(loss - want) <= tol * abs(want)


def test_adamw_step_matches_a_float64_numpy_adamw():
  """Two steps of the float32 preset against an independent numpy float64 AdamW (global-norm
  clipping, bias correction, decoupled weight decay, the warmup+cosine learning rate), fed
  the same gradients; relative tolerance 1e-5 on the updated weights."""
  tp, opt = train.get_preset("float32"), _opt(steps=10, clip=0.5, weight_decay=0.1)
  state = train.init_state(CFG, tp, opt, 2)
  step = train.step_fn(CFG, tp, opt)
  p = [np.asarray(x, np.float64) for x in _leaves(state.params)]
  mu = [np.zeros_like(x) for x in p]
  nu = [np.zeros_like(x) for x in p]
  sched = opt.schedule()
  grad = jax.jit(jax.grad(lambda q, b: train.loss_fn(CFG, tp, q, b)[0]))
  for t in range(2):
    batch = train.train_batch("count_ones", 2, t, 8, L)
    g = [np.asarray(x, np.float64) for x in _leaves(grad(state.params, batch))]
    norm = np.sqrt(sum((x * x).sum() for x in g))
    g = [x * min(1.0, opt.clip / norm) for x in g]
    lr = float(sched(t))
    for i in range(len(p)):
      mu[i] = opt.b1 * mu[i] + (1 - opt.b1) * g[i]
      nu[i] = opt.b2 * nu[i] + (1 - opt.b2) * g[i] ** 2
      mh, nh = mu[i] / (1 - opt.b1 ** (t + 1)), nu[i] / (1 - opt.b2 ** (t + 1))
      p[i] = p[i] - lr * (mh / (np.sqrt(nh) + opt.eps) + opt.weight_decay * p[i])
    state, m = step(state, batch)
    assert abs(float(m["grad_norm"]) - norm) <= 1e-5 * norm
  assert float(sched(1)) > 0
  for got, want in zip(_leaves(state.params), p):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", PRESETS)
def test_train_step_lowers_the_loss_on_a_fixed_batch(name):
  tp, opt = train.get_preset(name), _opt(steps=40, lr=1e-2)
  state = train.init_state(CFG, tp, opt, 0)
  batch = train.train_batch("count_ones", 0, 0, 32, L)
  step = train.step_fn(CFG, tp, opt)
  first = float(train.loss_fn(CFG, tp, state.params, batch)[0])
  for _ in range(40):
    state, _m = step(state, batch)
  last = float(train.loss_fn(CFG, tp, state.params, batch)[0])
  assert last < 0.5 * first, (first, last)


# -- checkpoints, determinism, resuming ------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_checkpoint_round_trips_exactly(name, tmp_path):
  tp, opt = train.get_preset(name), _opt()
  state = train.init_state(CFG, tp, opt, 0)
  state, _ = train.step_fn(CFG, tp, opt)(state, train.train_batch("copy_last", 0, 0, 8, L))
  path = str(tmp_path / "ck" / train.CHECKPOINT)
  train.save_checkpoint(path, state, {"history": {"loss": [1.5]}})
  assert os.listdir(tmp_path / "ck") == [train.CHECKPOINT]  # no temporary file left
  back, meta = train.load_checkpoint(path, train.init_state(CFG, tp, opt, 5))
  _same_bits(back, state)
  assert meta == {"history": {"loss": [1.5]}}
  other = train.init_state(CFG.replace(d_model=8), tp, opt, 0)
  with pytest.raises(ValueError, match="needs"):
    train.load_checkpoint(path, other)
  # same shapes, another run: told apart by the stored identity
  ident = train.identity(CFG, tp, opt, "copy_last", 0, 8, L)
  train.save_checkpoint(path, state, {"history": {}, "run": ident})
  train.load_checkpoint(path, train.init_state(CFG, tp, opt, 0), ident)
  with pytest.raises(ValueError, match="task"):
    train.load_checkpoint(path, train.init_state(CFG, tp, opt, 0), {**ident, "task": "count_ones"})


def test_checkpoint_keeps_fp8_bits(tmp_path):
  """ml_dtypes' fp8 types (numpy kind 'f', user-defined) round-trip as raw bits too."""
  for dt in (ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16):
    w = jnp.asarray(np.linspace(-3, 3, 12).astype(dt))
    state = train.TrainState(jnp.zeros((), jnp.int32), {"w": w}, ())
    path = str(tmp_path / "f.npz")
    train.save_checkpoint(path, state, {})
    back, _ = train.load_checkpoint(path, state)
    _same_bits(back, state)


def test_optimizer_rejects_bad_settings():
  for kw, msg in (({"warmup": 20, "steps": 20}, "warmup"), ({"lr": 0.0}, "lr"),
                  ({"steps": 0}, "steps")):
    with pytest.raises(ValueError, match=msg):
      train.Optimizer(**kw)


def test_same_seed_same_parameters_and_resume_equals_an_uninterrupted_run(tmp_path):
  tp, opt = train.get_preset("bfloat16"), _opt(steps=12)
  kw = dict(seed=3, batch_size=8, l_train=L, eval_every=4, eval_samples=8, log=lambda *_: None)
  a, ha = train.train(CFG, tp, opt, "count_ones", **kw)
  b, _ = train.train(CFG, tp, opt, "count_ones", **kw)
  _same_bits(a.params, b.params)
  c, _ = train.train(CFG, tp, opt, "count_ones", **{**kw, "seed": 4})
  assert not all(np.array_equal(bits(x), bits(y)) for x, y in zip(_leaves(a.params),
                                                                  _leaves(c.params)))
  # interrupted by should_stop after 5 steps (checkpointed there), then resumed from the file
  path = str(tmp_path / train.CHECKPOINT)
  asked = iter(range(100))
  part, hp = train.train(CFG, tp, opt, "count_ones", checkpoint=path,
                         should_stop=lambda: next(asked) >= 5, **kw)
  assert hp["stopped_at"] == 5 and int(part.step) == 5
  state, meta = train.load_checkpoint(path, train.init_state(CFG, tp, opt, 0))
  done, hd = train.train(CFG, tp, opt, "count_ones", state=state, history=meta["history"],
                         checkpoint=path, **kw)
  _same_bits(done, a)
  assert hd["steps"] == list(range(12)) and hd["loss"] == ha["loss"]


# -- evaluation and the collapse probe -------------------------------------------------------

def test_evaluate_and_grad_norms_by_length():
  tp = train.get_preset("float32")
  state = train.init_state(CFG, tp, _opt(), 0)
  rows = train.evaluate(CFG, tp, state.params, "count_ones", [2, 8], samples=16, seed=0,
                        l_train=L)
  assert [r["n"] for r in rows] == [2, 8] and all(0 <= r["accuracy"] <= 1 for r in rows)
  assert rows[0]["answerable"] == 16 and rows[1]["answerable"] <= 16
  g = train.grad_norm_by_length(CFG, tp, state.params, "copy_first", [3, 5], samples=4, seed=0)
  assert all(r["grad_norm"] > 0 for r in g)
  assert train.first_below([{"n": 1, "accuracy": .9}, {"n": 2, "accuracy": .4}], "accuracy",
                           .5) == 2


def test_collapse_probe_matches_exact_length_forwards_and_the_corollary():
  """The sweep engine's distances on Cor. B.10's pairs equal the distances between exact-length
  forwards of [BOS, 1^c] and [BOS, 1^(c+1)] (float32, rtol 1e-5); the answers are the
  exact-length forwards' argmax at each c; onsets agree with the equal flags; equal outputs
  never give different answer tokens (checked where pairs are equal: e5m2)."""
  from collapse_jax import metrics, model
  params = train.init_state(CFG, train.get_preset("float32"), _opt(), 0).params
  pols = [precision.get_policy("float32"), precision.get_policy("float8_e5m2")]
  if pols[1].unavailable_reason():  # fp8 under --xla_cpu_max_isa=SSE4_2 (conftest's rule)
    pytest.skip(pols[1].unavailable_reason())
  col = train.collapse(CFG, params, pols, 100, log=lambda *_: None)
  f32 = col["float32"]
  np.testing.assert_array_equal(f32["counts"], np.arange(1, 101))
  pol = pols[0]
  y_fn = jax.jit(lambda p, t: model.forward(CFG, pol, p, t)["y"][0, -1])
  for c in (1, 90):
    y = [np.asarray(y_fn(pol.cast_params(params), jnp.asarray([[train.BOS] + [train.ONE] * k])),
                    np.float64) for k in (c, c + 1)]
    want = np.abs(y[0] - y[1]).max()
    np.testing.assert_allclose(f32["linf"][c - 1], want, rtol=1e-5, atol=1e-7)
  logits_fn = jax.jit(lambda p, t: model.forward(CFG, pol, p, t,
                                                 collect=("last_logits",))["last_logits"][0])
  for c in (0, 3, 60):  # the answers line up with c
    tok = int(jnp.argmax(logits_fn(pol.cast_params(params),
                                   jnp.asarray([[train.BOS] + [train.ONE] * c]))))
    assert f32["predicted"][c] == (tok - train.COUNT0 if tok >= train.COUNT0 else -1)
  # e5m2 (2 mantissa bits) collapses this random-init model: the corollary's check has
  # equal pairs to look at
  e5 = col["float8_e5m2"]
  assert np.asarray(e5["equal"]).sum() >= 5
  for r in col.values():
    eq = np.asarray(r["equal"], bool)
    first = int(metrics.collapse_onset(eq, np.arange(1, 101)))
    assert r["collapse_onset"] == first
    assert len(r["predicted"]) == 102 and len(r["same_answer"]) == 100
    cor = r["corollary"]
    assert cor["holds"] and cor["equal_pairs"] == eq.sum()
    assert cor["wrong"] >= cor["forced_wrong"] == eq.sum()
    # the premise, tested at every equal pair (51 of 100 under e5m2 when measured): the
    # evaluation path gives both counts one answer
    assert cor["premise_holds"] and cor["answer_differs_at_equal"] == 0
  # the answers the check uses are the evaluation path's (left-padded, alone in the row)
  cor = e5["corollary"]
  a, b = cor["classes"][0]
  got = train.answer_counts(CFG, pols[1], params, [a, b])
  batch = train.Batch(*train.pad_left([np.asarray([train.BOS] + [train.ONE] * c, np.int32)
                                       for c in (a, b)], train.eval_width(b)),
                      np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(2, np.int32))
  tp = train.TrainPrecision("e5m2", jnp.float32, jnp.float32, "float8_e5m2")
  want = train.predict(CFG, tp, params, batch) - train.COUNT0
  assert [got[a], got[b]] == [int(w) if w >= 0 else -1 for w in want]
  # copy tasks: the pairs' correct answers are equal, the corollary predicts nothing
  cp = train.collapse(CFG, params, pols[:1], 4, task="copy_first", log=lambda *_: None)
  assert cp["float32"]["corollary"] is None


def test_b10_consequence_fails_on_answers_a_collapsed_model_cannot_give():
  """The corollary's check, given broken input: bitwise-equal pairs (c = 3, 4 and 4, 5: one
  class {3, 4, 5}; and 8, 9) with answers that get two counts of one class right. It must
  report the violation; honest answers (one per class, or all wrong) must pass; counts beyond
  the count tokens cannot be right, so such a class cannot fail."""
  counts = np.arange(1, 11)
  eq = np.zeros(10, bool)
  eq[[2, 3, 7]] = True  # pairs (3, 4), (4, 5), (8, 9)
  oracle = {c: c for c in range(1, 12)}  # every count right: impossible under collapse
  r = train.b10_consequence(eq, counts, oracle, max_count_token=20)
  assert r["classes"] == [[3, 5], [8, 9]] and r["forced_wrong"] == 3
  assert not r["holds"] and r["violations"] == [[3, 5], [8, 9]] and r["wrong"] == 0
  one_answer = {**oracle, 3: 4, 4: 4, 5: 4, 8: 8, 9: 8}  # one answer per class, one right
  r = train.b10_consequence(eq, counts, one_answer, max_count_token=20)
  assert r["holds"] and r["wrong"] == 3 == r["forced_wrong"] and r["answer_differs_at_equal"] == 0
  # two right in {3, 4, 5}, answers differ: fails, and says the premise broke too
  r = train.b10_consequence(eq, counts, {**one_answer, 3: 3}, max_count_token=20)
  assert not r["holds"] and r["violations"] == [[3, 5]] and r["answer_differs_at_equal"] == 1
  assert not r["premise_holds"]
  # answers that differ at an equal pair but are both wrong: the corollary holds, the premise
  # does not (the equal y did not decide the answers)
  r = train.b10_consequence(eq, counts, {**one_answer, 3: 7}, max_count_token=20)
  assert r["holds"] and not r["premise_holds"] and r["answer_differs_at_equal"] == 1
  # with count tokens only up to 3, no class has two answerable counts: nothing to fail
  r = train.b10_consequence(eq, counts, oracle, max_count_token=3)
  assert r["classes_that_could_fail"] == 0
  with pytest.raises(ValueError, match="no answer for counts"):
    train.b10_consequence(eq, counts, {3: 3}, max_count_token=20)
