"""collapse_jax.theory.scorecard: the registry, the report, fast checks' verdicts, and every
criterion fed a broken input on purpose (it must report FAIL)."""
import numpy as np
import pytest

from collapse_jax.theory import scorecard


@pytest.fixture
def temporary_check():
  """Register checks for one test and remove them afterwards."""
  before = list(scorecard.CHECKS)
  yield scorecard.register
  scorecard.CHECKS[:] = before


def test_registry_names_are_unique_and_validated(temporary_check):
  names = [c.name for c in scorecard.CHECKS]
  assert len(names) == len(set(names)) and {"b1", "b9", "c3_synthetic"} <= set(names)
  with pytest.raises(ValueError, match="duplicate"):
    temporary_check("b1")(lambda full: [])
  assert scorecard.check_names(None) is None
  assert scorecard.check_names(["b4"]) == {"b4"}
  with pytest.raises(ValueError, match="unknown checks"):
    scorecard.check_names(["b4", "nope"])


def test_a_raising_check_is_a_fail_row_and_report_escapes_pipes(temporary_check):
  @temporary_check("boom")
  def boom(full):
    raise RuntimeError("x|y")

  @temporary_check("fine")
  def fine(full):
    return [scorecard.Row("a|b", "ref", f"full={full}", None, {})]

  rows = scorecard.run_checks({"boom", "fine"}, full=True)
  assert [(r["check"], r["passed"]) for r in rows] == [("boom", False), ("fine", None)]
  assert "RuntimeError: x|y" in rows[0]["measured"] and "traceback" in rows[0]["details"]
  assert rows[1]["measured"] == "full=True"
  assert scorecard.tally(rows) == {"passed": 0, "failed": 1, "info": 1}
  md = scorecard.to_markdown(rows)
  assert "a\\|b" in md and "| FAIL |" in md and "| info |" in md


def test_fast_softmax_and_spectral_checks_pass():
  rows = scorecard.run_checks({"b4", "b6_b7", "b8_spectral"})
  assert [r["check"] for r in rows] == ["b4", "b6_b7", "b8_spectral"]
  assert all(r["passed"] is True for r in rows), [r["measured"] for r in rows]



# -- every criterion, fed a broken input on purpose, must report FAIL --------------------------
# Each test below changes one input of one check (its model, its data, or a hypothesis of the
# paper's statement) so that the statement no longer holds, runs the check through
# scorecard.run_checks, and asserts the row is a FAIL (not a raise: a raising check is a FAIL too,
# so each test also asserts the row is the criterion's own). Heavier checks are slow-marked.

def _rows(name):
  rows = scorecard.run_checks({name})
  assert not any(r["claim"].startswith("check ") and r["claim"].endswith("raised")
                 for r in rows), [r["measured"] for r in rows]
  return rows


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # 0 / 0 vs the closed form
def test_b1_fails_when_the_inserted_token_has_no_weight(monkeypatch):
  """Lemma B.1 needs a bounded inserted score b; b = -inf inserts weight 0, the gap is 0."""
  from collapse_jax.theory import softmax
  orig = softmax.lemma_b1_sweep
  assert _rows("b1")[0]["passed"] is True
  monkeypatch.setattr(softmax, "lemma_b1_sweep",
                      lambda ns, **kw: orig(ns, **{**kw, "b": -np.inf, "precisions": ()}))
  assert _rows("b1")[0]["passed"] is False


def test_b2_fails_when_every_token_is_perturbed(monkeypatch):
  """Lemma B.2 perturbs a bounded number k of tokens; perturbing all of them (k >= n) keeps
  the distance from decaying."""
  from collapse_jax.theory import softmax
  orig = softmax.lemma_b2_sweep
  assert _rows("b2")[0]["passed"] is True
  monkeypatch.setattr(softmax, "lemma_b2_sweep",
                      lambda ns, seeds, **kw: orig(ns, seeds, **{**kw, "k": 10**9,
                                                                  "precisions": ()}))
  row = _rows("b2")[0]
  assert row["passed"] is False and row["details"]["slope"] > -0.8


def test_b4_fails_on_another_pair(monkeypatch):
  """Lemma B.4's value 2(e-1)/(e+1) is the alternating pair's; a 1-in-4 pattern and its shift
  have another distance (2(e-1)/(e+3) in the limit)."""
  from collapse_jax.theory import softmax
  monkeypatch.setattr(softmax, "lemma_b4_pair", lambda n: (np.resize([1.0, 0, 0, 0], n),
                                                           np.resize([0, 1.0, 0, 0], n)))
  assert _rows("b4")[0]["passed"] is False


def _self_only_row(lam):
  """``lam`` with row n//2 attending only to itself (Lemma B.6's >= 2 nonzeros broken)."""
  lam = np.array(lam)
  k = len(lam) // 2
  lam[k] = 0.0
  lam[k, k] = 1.0
  return lam


def test_b6_b7_fails_when_a_row_attends_only_to_itself(monkeypatch):
  from collapse_jax.theory import spectral
  orig = spectral.random_causal
  monkeypatch.setattr(spectral, "random_causal", lambda n, seed=0, scale=1.0: _self_only_row(
      orig(n, seed, scale)) if seed == 0 else orig(n, seed, scale))
  row = _rows("b6_b7")[0]
  assert row["passed"] is False and "multiplicity of 1 = 2" in row["measured"]


@pytest.mark.slow
def test_b8_fails_when_a_row_attends_only_to_itself(monkeypatch):
  """A self-only row keeps its own column: ((Lambda+I)/2)^L never reaches the first column."""
  from collapse_jax.theory import spectral
  orig = spectral.uniform_causal
  monkeypatch.setattr(spectral, "uniform_causal", lambda n: _self_only_row(orig(n)))
  assert _rows("b8_spectral")[0]["passed"] is False


def _small_decoder(monkeypatch):
  from collapse_jax.theory import sensitivity
  orig = sensitivity.vector_decoder
  monkeypatch.setattr(sensitivity, "vector_decoder",
                      lambda n, **kw: orig(16, **{**kw, "d_model": 8}))


@pytest.mark.slow
def test_b5_fails_on_a_bound_of_other_weights(monkeypatch):
  """Theorem 5.1's check with its bound computed from W_O / 1000 (not the weights whose
  sensitivity is measured): the bound no longer covers the attention paths. Unbroken, the
  same small setting passes."""
  from collapse_jax.theory import sensitivity
  _small_decoder(monkeypatch)
  assert _rows("b5_bound")[0]["passed"] is True
  orig = sensitivity.oversquashing_bound

  def broken(cfg, policy, params, x, constants="analytic"):
    p = {k: ({**v, "attn": {**v["attn"], "o": v["attn"]["o"] * 1e-3}}
             if k.startswith("layer_") else v) for k, v in params.items()}
    return orig(cfg, policy, p if constants == "analytic" else params, x, constants=constants)

  monkeypatch.setattr(sensitivity, "oversquashing_bound", broken)
  row = _rows("b5_bound")[0]
  assert row["passed"] is False and row["details"]["max_ratio_frozen"] > 1


def _b9_small(monkeypatch, **model_kw):
  """check b9 on multiplier 2 only (fewer compiles), with the models built with
  ``model_kw`` changed (the broken input)."""
  from collapse_jax.theory import counting
  sweep, models = counting.b9_sweep, counting.b9_models
  monkeypatch.setattr(counting, "b9_sweep", lambda m, p, **kw: sweep(m, p, **{
      **kw, "multipliers": (2,)}))

  def broken(**kw):
    out = models(**{**kw, **{k: v for k, v in model_kw.items() if k != "pe"}})
    if "pe" in model_kw:
      out = {c: (cfg.replace(pe=model_kw["pe"]), p) for c, (cfg, p) in out.items()}
    return out

  monkeypatch.setattr(counting, "b9_models", broken)
  return _rows("b9")


@pytest.mark.slow
def test_b9_fails_with_positional_encoding(monkeypatch):
  """Prop. B.9 needs no PE: with RoPE the expansions' tokens sit at other positions, and both
  the invariance and the causal contrast's depth-1 equality fail."""
  rows = _b9_small(monkeypatch, pe="rope")
  assert [r["passed"] for r in rows] == [False, None, False]


@pytest.mark.slow
def test_b9_causal_contrast_fails_with_one_layer(monkeypatch):
  """The causal mask breaks the invariance only from depth 2: a one-layer model has nothing
  there to differ (its final output is the depth-1 one), so the contrast row fails, while
  the invariance row still passes."""
  rows = _b9_small(monkeypatch, layers=1)
  assert [r["passed"] for r in rows] == [True, None, False]


def _b10_with(monkeypatch, fn):
  from collapse_jax.theory import counting
  orig = counting.b10_model
  monkeypatch.setattr(counting, "b10_model", lambda N, **kw: fn(orig, N, **kw))
  return _rows("b10")[0]


@pytest.mark.slow
def test_b10_fails_where_the_position_stays_visible(monkeypatch):
  """Sinusoidal PE added to the input: the last token carries its own position, y_n and
  y_(n+1) stay apart in bf16 and no count is forced wrong up to n = 256."""
  row = _b10_with(monkeypatch, lambda orig, N, **kw: (
      lambda cp: (cp[0].replace(pe="sinusoidal"), cp[1]))(orig(N, **kw)))
  assert row["passed"] is False and "no collapse" in row["measured"]


@pytest.mark.slow
def test_b10_fails_when_float64_cannot_tell_the_counts_apart(monkeypatch):
  """BOS embedded as 'a' and no PE: every prefix is the same token repeated, so the counts are
  equal in exact arithmetic too. bf16 collapses (from counts 0 and 1), but that is no
  precision effect: the float64 distance is within rounding (measured: exactly 0) and the
  row must fail."""
  def same_tokens(orig, N, **kw):
    cfg, params = orig(N, **{**kw, "pe": "none"})
    emb = params["embed"]["embedding"]
    return cfg, {**params, "embed": {"embedding": emb.at[0].set(emb[1])}}

  row = _b10_with(monkeypatch, same_tokens)
  wc = row["details"]["wrong_count"]
  assert row["passed"] is False and wc is not None and wc["reference_linf"] <= row["details"][
      "bound"]


@pytest.mark.slow
def test_c3_fails_when_the_copy_takes_a_new_position(monkeypatch):
  """Theorem 4.2 compares a sequence with its last token's input vector copied; copying the
  token to position n (a new PE) changes the query, and the distance does not decay."""
  from collapse_jax import pairs, sweep
  grid, parse = sweep.synthetic_collapse_grid, pairs.parse_lengths
  monkeypatch.setattr(pairs, "parse_lengths", lambda spec: parse("log:2:1024:10"))
  monkeypatch.setattr(sweep, "synthetic_collapse_grid", lambda pe, v, ls, seeds, dtypes, **kw:
                      grid(pe, v, ls, seeds, ("bfloat16",), **{**kw, "copy": "token"}))
  row = _rows("c3_synthetic")[0]
  assert row["passed"] is False
