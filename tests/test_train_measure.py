"""collapse_jax.train.measure: evaluation and gradient norms by length, the collapse probe
against exact-length forwards, and Cor. B.10's consequence (including inputs that must fail)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import precision
from collapse_jax.train import data, measure
from collapse_jax.train import state as state_lib

try:
  from train_helpers import CFG, L, small_opt
except ImportError:
  from tests.train_helpers import CFG, L, small_opt


def test_evaluate_and_grad_norms_by_length():
  tp = state_lib.train_precision("float32")
  state = state_lib.init_state(CFG, tp, small_opt(), 0)
  rows = measure.evaluate(CFG, tp, state.params, "count_ones", [2, 8], samples=16, seed=0,
                        l_train=L)
  assert [r["n"] for r in rows] == [2, 8] and all(0 <= r["accuracy"] <= 1 for r in rows)
  assert rows[0]["answerable"] == 16 and rows[1]["answerable"] <= 16
  g = measure.grad_norm_by_length(CFG, tp, state.params, "copy_first", [3, 5], samples=4, seed=0)
  assert all(r["grad_norm"] > 0 for r in g)
  assert measure.first_below([{"n": 1, "accuracy": .9}, {"n": 2, "accuracy": .4}], "accuracy",
                           .5) == 2


@pytest.mark.slow
def test_collapse_probe_matches_exact_length_forwards_and_the_corollary():
  """The sweep engine's distances on Cor. B.10's pairs equal the distances between exact-length
  forwards of [BOS, 1^c] and [BOS, 1^(c+1)] (float32, rtol 1e-5); the answers are the
  exact-length forwards' argmax at each c; onsets agree with the equal flags; equal outputs
  never give different answer tokens (checked where pairs are equal: e5m2)."""
  from collapse_jax import metrics, model
  params = state_lib.init_state(CFG, state_lib.train_precision("float32"), small_opt(), 0).params
  pols = [precision.get_policy("float32"), precision.get_policy("float8_e5m2")]
  if pols[1].unavailable_reason():  # fp8 under --xla_cpu_max_isa=SSE4_2 (conftest's rule)
    pytest.skip(pols[1].unavailable_reason())
  col = measure.collapse(CFG, params, pols, 100, log=lambda *_: None)
  f32 = col["float32"]
  np.testing.assert_array_equal(f32["counts"], np.arange(1, 101))
  pol = pols[0]
  y_fn = jax.jit(lambda p, t: model.forward(CFG, pol, p, t)["y"][0, -1])
  for c in (1, 90):
    y = [np.asarray(y_fn(pol.cast_params(params), jnp.asarray([[data.BOS] + [data.ONE] * k])),
                    np.float64) for k in (c, c + 1)]
    want = np.abs(y[0] - y[1]).max()
    np.testing.assert_allclose(f32["linf"][c - 1], want, rtol=1e-5, atol=1e-7)
  logits_fn = jax.jit(lambda p, t: model.forward(CFG, pol, p, t,
                                                 collect=("last_logits",))["last_logits"][0])
  for c in (0, 3, 60):  # the answers line up with c
    tok = int(jnp.argmax(logits_fn(pol.cast_params(params),
                                   jnp.asarray([[data.BOS] + [data.ONE] * c]))))
    assert f32["predicted"][c] == (tok - data.COUNT0 if tok >= data.COUNT0 else -1)
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
  got = measure.answer_counts(CFG, pols[1], params, [a, b])
  batch = data.Batch(*data.pad_left([np.asarray([data.BOS] + [data.ONE] * c, np.int32)
                                       for c in (a, b)], data.eval_width(b)),
                      np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(2, np.int32))
  tp = state_lib.TrainPrecision("e5m2", jnp.float32, jnp.float32, "float8_e5m2")
  want = state_lib.predict(CFG, tp, params, batch) - data.COUNT0
  assert [got[a], got[b]] == [int(w) if w >= 0 else -1 for w in want]
  # copy tasks: the pairs' correct answers are equal, the corollary predicts nothing (the
  # same counts as above: the sweep's and the logits' programs are compiled already)
  cp = measure.collapse(CFG, params, pols[:1], 100, task="copy_first", log=lambda *_: None)
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
  r = measure.b10_consequence(eq, counts, oracle, max_count_token=20)
  assert r["classes"] == [[3, 5], [8, 9]] and r["forced_wrong"] == 3
  assert not r["holds"] and r["violations"] == [[3, 5], [8, 9]] and r["wrong"] == 0
  one_answer = {**oracle, 3: 4, 4: 4, 5: 4, 8: 8, 9: 8}  # one answer per class, one right
  r = measure.b10_consequence(eq, counts, one_answer, max_count_token=20)
  assert r["holds"] and r["wrong"] == 3 == r["forced_wrong"] and r["answer_differs_at_equal"] == 0
  # two right in {3, 4, 5}, answers differ: fails, and says the premise broke too
  r = measure.b10_consequence(eq, counts, {**one_answer, 3: 3}, max_count_token=20)
  assert not r["holds"] and r["violations"] == [[3, 5]] and r["answer_differs_at_equal"] == 1
  assert not r["premise_holds"]
  # answers that differ at an equal pair but are both wrong: the corollary holds, the premise
  # does not (the equal y did not decide the answers)
  r = measure.b10_consequence(eq, counts, {**one_answer, 3: 7}, max_count_token=20)
  assert r["holds"] and not r["premise_holds"] and r["answer_differs_at_equal"] == 1
  # with count tokens only up to 3, no class has two answerable counts: nothing to fail
  r = measure.b10_consequence(eq, counts, oracle, max_count_token=3)
  assert r["classes_that_could_fail"] == 0
  with pytest.raises(ValueError, match="no answer for counts"):
    measure.b10_consequence(eq, counts, {3: 3}, max_count_token=20)
