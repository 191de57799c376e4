"""collapse_jax.train.state: the three training precisions (checked in the jaxpr and the
state's dtypes, not assumed), the loss against the float64 reference forward, the AdamW step
against a float64 numpy AdamW, the optimizer's settings."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax import precision
from collapse_jax.train import data
from collapse_jax.train import state as state_lib

try:
  from reference import reference_forward_f64
  from train_helpers import CFG, L, PRECISIONS, leaves, small_opt
except ImportError:
  from tests.reference import reference_forward_f64
  from tests.train_helpers import CFG, L, PRECISIONS, leaves, small_opt


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
    pytest.param("float32", F32, F32, "float32", "float32", marks=pytest.mark.slow),
    pytest.param("bfloat16", BF16_FWD, BF16_BWD, "float32", "float32", marks=pytest.mark.slow),
    pytest.param("bfloat16_weights", BF16_FWD, BF16_BWD, "bfloat16", "bfloat16",
                 marks=pytest.mark.slow)])
def test_presets_put_each_tensor_where_they_say(name, fwd, bwd, master, moments):
  """The forward's matmuls take the preset's operand dtype (bf16 x bf16 -> f32 in both bf16
  presets); in the backward every matmul has a stored bf16 operand and an f32 cotangent (no
  f32 x f32 dot: nothing runs in f32 that the forward ran in bf16); master weights and Adam's
  moments keep their dtypes through a step. Read from the jaxprs and the state, not from the
  preset's description."""
  tp, opt = state_lib.train_precision(name), small_opt()
  state = state_lib.init_state(CFG, tp, opt, 0)
  batch = data.train_batch("count_ones", 0, 0, 8, L)
  loss = lambda p: state_lib.loss_fn(CFG, tp, p, batch)[0]
  assert _dots(jax.make_jaxpr(loss)(state.params).jaxpr) == fwd
  assert _dots(jax.make_jaxpr(jax.grad(loss))(state.params).jaxpr) == bwd
  res = state_lib.forward_logits(CFG, tp, state.params, batch.tokens, batch.positions, batch.valid,
                             collect=("residual",))["residual"]
  assert str(res.dtype) == tp.policy.storage_dtype.name
  state, m = state_lib.step_fn(CFG, tp, opt)(state, batch)
  assert {str(x.dtype) for x in leaves(state.params)} == {master}
  mu_nu = [x for x in leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert mu_nu and {str(x.dtype) for x in mu_nu} == {moments}
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  assert tp.describe()["master_dtype"] == master and tp.describe()["moment_dtype"] == moments


def test_mixed_preset_gradients_come_back_through_the_bf16_cast():
  """bfloat16 (mixed): the f32 master weights are rounded to bf16 inside the differentiated
  function, so their gradient is the bf16 cotangent upcast: every value is a bf16 number.
  Under float32 they are not (a check that the test can fail)."""
  batch = data.train_batch("count_ones", 0, 0, 16, L)
  for name, expect_bf16 in (("bfloat16", True), ("float32", False)):
    tp = state_lib.train_precision(name)
    state = state_lib.init_state(CFG, tp, small_opt(), 0)
    g = jax.jit(jax.grad(lambda p: state_lib.loss_fn(CFG, tp, p, batch)[0]))(state.params)
    vals = np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves(g)])
    assert vals.dtype == np.float32
    exact = np.array_equal(vals, vals.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert exact == expect_bf16, name


@pytest.mark.parametrize("name,tol", [("float32", 1e-5), ("bfloat16", 5e-2),
                                      ("bfloat16_weights", 5e-2)])
def test_loss_matches_the_float64_reference(name, tol):
  """The training loss (cross-entropy of the last row) against numpy float64 on the float64
  reference forward of the same (left-padded) batch and master weights; relative tolerance:
  1e-5 in float32, 5e-2 for the bf16 forward."""
  tp = state_lib.train_precision(name)
  state = state_lib.init_state(CFG, tp, small_opt(), 1)
  batch = data.train_batch("count_ones", 1, 0, 16, L)
  loss = float(state_lib.loss_fn(CFG, tp, state.params, batch)[0])
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
  tp, opt = state_lib.train_precision("float32"), small_opt(steps=10, clip=0.5, weight_decay=0.1)
  state = state_lib.init_state(CFG, tp, opt, 2)
  step = state_lib.step_fn(CFG, tp, opt)
  p = [np.asarray(x, np.float64) for x in leaves(state.params)]
  mu = [np.zeros_like(x) for x in p]
  nu = [np.zeros_like(x) for x in p]
  sched = opt.schedule()
  grad = jax.jit(jax.grad(lambda q, b: state_lib.loss_fn(CFG, tp, q, b)[0]))
  for t in range(2):
    batch = data.train_batch("count_ones", 2, t, 8, L)
    g = [np.asarray(x, np.float64) for x in leaves(grad(state.params, batch))]
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
  for got, want in zip(leaves(state.params), p):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # the default tier trains through tests/test_train_loop.py
@pytest.mark.parametrize("name", PRECISIONS)
def test_train_step_lowers_the_loss_on_a_fixed_batch(name):
  tp, opt = state_lib.train_precision(name), small_opt(steps=40, lr=1e-2)
  state = state_lib.init_state(CFG, tp, opt, 0)
  batch = data.train_batch("count_ones", 0, 0, 32, L)
  step = state_lib.step_fn(CFG, tp, opt)
  first = float(state_lib.loss_fn(CFG, tp, state.params, batch)[0])
  for _ in range(40):
    state, _m = step(state, batch)
  last = float(state_lib.loss_fn(CFG, tp, state.params, batch)[0])
  assert last < 0.5 * first, (first, last)


def test_optimizer_rejects_bad_settings():
  for kw, msg in (({"warmup": 20, "steps": 20}, "warmup"), ({"lr": 0.0}, "lr"),
                  ({"steps": 0}, "steps")):
    with pytest.raises(ValueError, match=msg):
      state_lib.Optimizer(**kw)



def test_a_training_precision_names_a_forward_preset():
  """The registry is not a second precision registry: each training precision's forward is
  a preset of precision.PRESETS, and a name outside it is refused."""
  for tp in state_lib.TRAIN_PRECISIONS.values():
    assert tp.forward_preset in precision.PRESETS
    assert tp.policy == precision.get_policy(tp.forward_preset).untiled()
  with pytest.raises(ValueError, match="not a precision preset"):
    state_lib.TrainPrecision("x", jnp.float32, jnp.float32, "bfloat17")
  with pytest.raises(ValueError, match="unknown training precision"):
    state_lib.train_precision("float64")
