"""The scorecard: every theory check of the paper, measured, with its pass criterion.

A check is ``fn(full: bool) -> list[Row]`` registered under a name; ``run_checks`` calls them in
order and ``to_markdown`` prints the table (claim, paper reference, measured, PASS/FAIL/info).
Adding one (e.g. another figure of the paper)::

    from collapse_jax.theory import scorecard

    @scorecard.register("synthetic_collapse")
    def synthetic_collapse(full: bool) -> list[scorecard.Row]:
      ...
      return [scorecard.Row(claim=..., reference="Thm 4.2, Fig. 8/10", measured=...,
                            passed=..., details={...})]

``passed`` is True/False, or None for an informational measurement the paper makes no
quantitative claim about. A check that raises is reported as a FAIL row, never hidden.
Pass criteria are fixed by the paper's statements before measuring; where the measurement
disagrees with the paper the row fails and the numbers say by how much. The settings come
from the same setup functions the experiments use (``sensitivity.vector_decoder``,
``counting.b9_models``, ``counting.b10_model``, ``sweep.synthetic_collapse_grid``).
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Callable, Sequence

import jax
import numpy as np

from collapse_jax.theory import counting, sensitivity, softmax, spectral


@dataclasses.dataclass
class Row:
  claim: str
  reference: str
  measured: str
  passed: bool | None
  details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Check:
  name: str
  fn: Callable[[bool], list[Row]]


CHECKS: list[Check] = []


def register(name: str):
  """Decorator: add ``fn(full: bool) -> list[Row]`` to the scorecard as check ``name``."""
  def deco(fn):
    if any(c.name == name for c in CHECKS):
      raise ValueError(f"duplicate scorecard check {name!r}")
    CHECKS.append(Check(name, fn))
    return fn
  return deco


def _g(x, digits=4):
  return "None" if x is None else f"{x:.{digits}g}"


def _per_precision(values: dict) -> str:
  return ", ".join(f"{p}: {v}" for p, v in values.items())


# -- softmax lemmas ----------------------------------------------------------------------
@register("b1")
def check_b1(full: bool) -> list[Row]:
  ns = sorted({2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096} | ({16384, 65536} if full else set()))
  r = softmax.lemma_b1_sweep(ns, precisions=("bfloat16", "float16", "float32"))
  f, g = softmax.lemma_b1_facts(r), r["gap"]
  rel = f["max_rel_error_vs_closed_form"]
  ok = f["all_positive"] and f["strictly_decreasing"] and rel < 1e-9
  return [
      Row("inserting a bounded token strictly lowers the last token's softmax weight; "
          "the gap -> 0 with n", "Lemma B.1",
          f"float64 gap {_g(g[0])} (n=2) -> {_g(g[-1])} (n={ns[-1]}), all > 0, strictly "
          f"decreasing; max rel. err vs e^(b+c)/(S(S+e^b)) {_g(rel, 2)}", ok,
          {"n": ns, "gap": g}),
      Row("(beyond the paper) first n where the stored weights are equal", "Lemma B.1",
          _per_precision(r["first_zero_by_precision"]), None, r["first_zero_by_precision"]),
  ]


@register("b2")
def check_b2(full: bool) -> list[Row]:
  ns = [200, 1000, 3000, 10000] + ([30000, 100000] if full else [])
  precs = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
  r = softmax.lemma_b2_sweep(ns, range(5), precisions=precs)
  f = softmax.lemma_b2_facts(r)
  m3, m4, mf3, mf4 = (f["mean_at_1e3"], f["mean_at_1e4"], f["mean_field_at_1e3"],
                      f["mean_field_at_1e4"])
  slope = f["slope_n_ge_1e3"]
  ok = bool(abs(m3 / 0.017 - 1) < 0.15 and abs(m4 / 0.002 - 1) < 0.15
            and abs(m3 / mf3 - 1) < 0.1 and abs(m4 / mf4 - 1) < 0.1 and slope < -0.8)
  return [
      Row("L1 distance of softmax(x), softmax(x*) decays with n (Fig. 9: ~0.017 at 1e3, "
          "~0.002 at 1e4, independent estimate)", "Lemma B.2, Fig. 9",
          f"float64 mean (5 seeds) {_g(m3)} at 1e3, {_g(m4)} at 1e4; mean-field {_g(mf3)}, "
          f"{_g(mf4)}; log-log slope {slope:.3f}", ok,
          {"n": ns, "mean": f["mean"], "mean_field": r["mean_field"], "slope": slope}),
      Row("(beyond the paper) first n where all 5 seeds give exactly 0 per precision",
          "Lemma B.2, Fig. 9", _per_precision(r["first_zero_by_precision"]), None,
          {"first_zero": r["first_zero_by_precision"],
           "underflow_fraction": r["underflow_by_precision"]}),
  ]


@register("b4")
def check_b4(full: bool) -> list[Row]:
  ns = [2, 4, 10, 100, 1000, 10000] + ([100000, 1000000] if full else [])
  r = softmax.lemma_b4_sweep(ns)
  err = float(r["abs_error_float64"].max())
  return [Row("x=(1,0,1,0,...), x*=(0,1,0,1,...): L1 = 2(e-1)/(e+1) = 0.924234 for every even n",
              "Lemma B.4", f"max |L1 - 0.9242343145| over n in {ns[0]}..{ns[-1]}: {_g(err, 3)}",
              err < 1e-12, {"n": ns, "tv": r["tv_float64"]})]


# -- over-squashing ----------------------------------------------------------------------
@register("b5_bound")
def check_b5(full: bool) -> list[Row]:
  """Theorem 5.1 judged against constants computed apart from the sensitivity: closed-form
  Lipschitz constants of the norms and the GELU MLP from the weights' spectral norms and the
  forward's activation statistics (``sensitivity.oversquashing_bound(constants='analytic')``).
  The same bound with the Jacobian norms measured at the input holds by the chain rule
  alone; it is reported (info) as what it is: a check that the path decomposition is
  complete."""
  n, L = (1024, 3) if full else (64, 2)
  with jax.enable_x64(True):
    r = sensitivity.sensitivity_vs_bound(*sensitivity.vector_decoder(n, layers=L))
  bc, u = r["bound_check"], r["ushape"]
  return [
      Row("||dy_n/dv_i|| <= C * path sum of prod(Lambda/beta1 + I) (attention weights held "
          "independent of the input; C, beta from the weights' spectral norms and the "
          "activations' norms in closed form, no Jacobian)", "Thm 5.1 / B.5",
          f"n={n}, L={L}: attention-frozen sensitivity <= bound at "
          f"{bc['frozen_le_bound_fraction']:.0%} of positions, max ratio "
          f"{_g(bc['max_frozen_over_bound'], 3)} (C={_g(bc['C'], 3)}, 1/beta1 "
          f"{', '.join(_g(x, 3) for x in bc['inv_beta1'])})",
          bc["frozen_le_bound_all"], {"max_ratio_frozen": bc["max_frozen_over_bound"],
                                      "C": bc["C"]}),
      Row("(consistency, holds by the chain rule) the same path sum with each layer's "
          "Jacobian norm measured at this input bounds the sensitivity: the decomposition "
          "counts every path", "Thm 5.1 / B.5",
          f"max ratio {_g(bc['max_frozen_over_factorised'], 3)} (C={_g(bc['C_factorised'], 3)}"
          f"); analytic / factorised bound >= {_g(bc['min_bound_over_factorised'], 3)}",
          None, {"max_ratio_factorised": bc["max_frozen_over_factorised"],
                 "frozen_le_factorised_all": bc["frozen_le_factorised_all"],
                 "bound_ge_factorised_all": bc["bound_ge_factorised_all"]}),
      Row("(outside the assumption) full gradient incl. attention weights vs the bound",
          "Thm 5.1 / B.5", f"full sensitivity <= bound at {bc['full_le_bound_fraction']:.0%} of "
          f"positions, max ratio {_g(bc['max_full_over_bound'], 3)}", None,
          {"max_ratio_full": bc["max_full_over_bound"]}),
      Row("U-shape: early tokens have more paths; last token via the residual", "Sec. 5",
          f"sensitivity first {_g(u['first_token'], 3)}, middle median "
          f"{_g(u['middle_half_median'], 3)}, last {_g(u['last_token'], 3)}; bound "
          f"first/middle {_g(u['bound_first_over_middle'], 3)}", None,
          {"first": u["first_token"], "middle_median": u["middle_half_median"],
           "last": u["last_token"]}),
  ]


@register("b6_b7")
def check_b6_b7(full: bool) -> list[Row]:
  n = 512 if full else 64
  lam = spectral.random_causal(n, 0)
  prod = lam @ spectral.random_causal(n, 1)
  c1, c2 = spectral.stochastic_checks(lam), spectral.stochastic_checks(prod)
  ok = (c1["multiplicity_one"] == 1 and c2["row_sum_err"] < 1e-12 and c2["upper_max"] == 0
        and np.all(c1["eig_lazy_sorted"] <= 1 + 1e-15))
  return [Row("causal row-stochastic: largest eigenvalue 1, simple if rows have >= 2 nonzeros;"
              " products stay triangular row-stochastic", "Lemma B.6, B.7",
              f"n={n}: multiplicity of 1 = {c1['multiplicity_one']}, product row-sum err "
              f"{_g(c2['row_sum_err'], 2)}, upper-triangle max {c2['upper_max']}", bool(ok), {})]


@register("b8_spectral")
def check_b8(full: bool) -> list[Row]:
  ns = [8, 64, 512] + ([4096] if full else [])
  ok, txt = True, []
  for n in ns:
    lam = spectral.uniform_causal(n)
    r = spectral.spectral_convergence(lam, range(0, 301), full=False)
    ok &= bool(r["err_last_row"][-1] < 1e-9 and abs(r["rate"] / r["lambda2"] - 1) < 0.01)
    txt.append(f"n={n}: err(L=300) {_g(r['err_last_row'][-1], 2)}, rate {r['rate']:.4f} vs "
               f"lambda2 {r['lambda2']:.4f}, L(1e-3)={spectral.layers_to_converge(lam)}")
  return [Row("((Lambda+I)/2)^L -> first column of ones; y_n depends only on v_1 as L->inf",
              "Prop. 5.2 / B.8", "; ".join(txt), ok, {})]


# -- counting ----------------------------------------------------------------------------
@register("b9")
def check_b9(full: bool) -> list[Row]:
  """Prop. B.9 is a statement in exact arithmetic, so it is judged in float64 against a
  rounding-level bound fixed here before running: 8 * L * (N_max + D) * eps64, with N_max the
  longest sequence (softmax and value sums have N terms, projections D terms, compounded
  over L layers). The causal contrast is judged in float64 too: at depth >= 2 the last
  token must differ by more than 1000 times that bound. bf16/f32 numbers are information."""
  mults = (2, 3, 4, 8) if full else (2, 3)
  L, D, base = 2, 32, "10"
  tol = 8 * L * (len(base) * max(mults) + D) * 2.0 ** -52  # float64 eps
  precs = ("float64", "bfloat16", "float32")
  with jax.enable_x64(True):
    out = counting.b9_sweep(counting.b9_models(layers=L, d_model=D, heads=2, base=base),
                            precs, base=base, multipliers=mults)
  worst = {p: max(max(r["max_rel_diff"]) for r in out[f"bidirectional/{p}"]) for p in precs}
  exact_list = [(r["policy"], r["multiplier"], r["arrangement"]) for p in precs[1:]
                for r in out[f"bidirectional/{p}"] if all(r["bitwise_equal"])]
  c_d1 = max(r["max_rel_diff"][1] for r in out["causal/float64"])
  c_d2 = min(max(r["max_rel_diff"][2:]) for r in out["causal/float64"])
  c_low = {p: min(max(r["max_rel_diff"][2:]) for r in out[f"causal/{p}"]) for p in precs[1:]}
  return [
      Row("no PE + no causal mask: equal token ratios ('10' vs '1100', '1010', ...) give "
          "identical representations at every depth (exact arithmetic: float64)",
          "Prop. 6.1 / B.9", f"float64 max rel. diff {_g(worst['float64'], 2)} <= rounding "
          f"bound {_g(tol, 2)}", bool(worst["float64"] <= tol),
          {"worst_rel_f64": worst["float64"], "bound": tol}),
      Row("the same identity in finite precision (information)", "Prop. 6.1 / B.9",
          f"bitwise equal at every depth: {exact_list or 'none'} (m a power of two); otherwise "
          f"max rel. diff bf16 {_g(worst['bfloat16'], 2)} (eps {2**-7:g}), f32 "
          f"{_g(worst['float32'], 2)} (eps {2**-23:.2g})", None,
          {"exact": exact_list, "worst_rel": worst}),
      Row("causal mask breaks the invariance (last token, float64): equal at depth 1, not at "
          ">= 2", "Sec. 6 / B.9", f"depth-1 max rel. diff {_g(c_d1, 2)} (bound {_g(tol, 2)}); "
          f"depth>=2 smallest over cases {_g(c_d2, 2)} (needs > {_g(1000 * tol, 2)}); bf16 "
          f"{_g(c_low['bfloat16'], 2)}, f32 {_g(c_low['float32'], 2)}",
          bool(c_d1 <= tol and c_d2 > 1000 * tol),
          {"depth1_f64": c_d1, "depth2_f64": c_d2, "depth2_low": c_low}),
  ]


@register("b10")
def check_b10(full: bool) -> list[Row]:
  """Cor. B.10 in finite precision: some counts c and c+1 get bitwise-equal final outputs
  (confirmed by two exact-length forwards), while the float64 model keeps them apart by more
  than rounding: 8 * L * (N + D) * eps64, the bound of check b9 (an equality the float64
  model shares was never a distinction the precision erased). float32: info when no
  collapse is found."""
  N = 8192 if full else 256
  cfg, params = counting.b10_model(N)
  tol = 8 * cfg.num_layers * (N + cfg.d_model) * 2.0 ** -52  # float64 rounding level
  rows = []
  with jax.enable_x64(True):
    for p in (("bfloat16", "float16", "float32") if full else ("bfloat16",)):
      r = counting.counting_collapse(cfg, p, params, N, confirm=2)
      wc = r["wrong_count"]
      ok = bool(wc and wc["exact_length_confirmed"] and wc["reference_linf"] is not None
                and wc["reference_linf"] > tol)
      rows.append(Row(f"a count must be wrong: y_n == y_(n+1) bitwise ({p}), while float64 "
                      "keeps the counts apart", "Cor. 6.2 / B.10",
                      (f"[BOS, a x c]: counts {wc['counts'][0]} and {wc['counts'][1]} bitwise "
                       f"equal (exact-length confirmed: {wc['exact_length_confirmed']}); float64 "
                       f"distance {_g(wc['reference_linf'], 3)} (needs > {_g(tol, 2)}); "
                       f"{r['fraction_equal']:.0%} of n <= {N} collapse") if wc
                      else f"no collapse up to n={N}",
                      ok if p != "float32" else (ok or None), {"wrong_count": wc, "bound": tol}))
  return rows


# -- synthetic representational collapse (Theorem 4.2 / B.3, appendix C.3) ----------------
@register("c3_synthetic")
def check_c3(full: bool) -> list[Row]:
  from collapse_jax import pairs, sweep  # the sweep engine: imported only by this check
  max_len, points = (16384, 200) if full else (1024, 40)
  lengths = pairs.parse_lengths(f"log:2:{max_len}:{points}")
  dtypes = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
  _, recs = sweep.synthetic_collapse_grid("sinusoidal", 1 / 64, lengths, [0], dtypes,
                                          log=lambda *a: None)
  ref = next(r for r in recs if r["dtype"] == "float64")
  d = np.asarray(ref["attn_linf"], np.float64)
  n = np.asarray(ref["lengths"])
  d16, dmax = float(d[np.argmin(abs(n - 16))]), float(d[-1])
  ok = bool(dmax < 0.1 * d16)
  onsets = {r["dtype"]: {"measured": r["attn_onset"], "predicted": r["predicted_onset"],
                         "sustained": r["attn_sustained_onset"]}
            for r in recs if r["dtype"] != "float64"}
  return [
      Row("last token copied: the final-token attention outputs of n and n+1 tokens converge "
          "(1 attention layer, d=64, N(0,1/d), sinusoidal PE; criterion: float64 distance at "
          "the largest n < 0.1 x its value at n=16)", "Thm 4.2 / B.3, Fig. 8",
          f"float64 ||dz||_inf {_g(d16)} at n=16 -> {_g(dmax)} at n={int(n[-1])}", ok,
          {"n": n, "linf_float64": d}),
      Row("(beyond the paper) bitwise-equal onset per precision: measured vs predicted from "
          "the float64 distance < ulp/2", "Thm 4.2, Fig. 8",
          ", ".join(f"{k}: {v['measured']} vs {v['predicted']}" for k, v in onsets.items()),
          None, onsets),
  ]


# -- running and reporting ---------------------------------------------------------------
def check_names(only: Sequence[str] | None) -> set[str] | None:
  """The names to run (None: all); an unknown name is a one-line ValueError."""
  if not only:
    return None
  names = set(only)
  unknown = names - {c.name for c in CHECKS}
  if unknown:
    raise ValueError(f"unknown checks {sorted(unknown)}; valid: {[c.name for c in CHECKS]}")
  return names


def run_checks(names=None, full=False) -> list[dict]:
  """Run the registered checks (all, or those in ``names``) in order: one dict per Row with
  its 'check' name and the check's 'seconds'. A check that raises gives a FAIL row."""
  rows = []
  for c in CHECKS:
    if names and c.name not in names:
      continue
    t0 = time.time()
    try:
      got = c.fn(full)
    except Exception as e:  # reported, never hidden
      got = [Row(f"check {c.name} raised", "-", f"{type(e).__name__}: {e}", False,
                 {"traceback": traceback.format_exc()})]
    for r in got:
      rows.append({"check": c.name, **dataclasses.asdict(r), "seconds": time.time() - t0})
  return rows


def status(passed: Any) -> str:
  return {True: "PASS", False: "FAIL", None: "info"}[passed]


def tally(rows) -> dict:
  """{'passed', 'failed', 'info'}: how many rows have each status."""
  return {"passed": sum(r["passed"] is True for r in rows),
          "failed": sum(r["passed"] is False for r in rows),
          "info": sum(r["passed"] is None for r in rows)}


def to_markdown(rows) -> str:
  lines = ["| check | claim | paper | measured | result |", "|---|---|---|---|---|"]
  for r in rows:
    cells = [r["check"], r["claim"], r["reference"], r["measured"], status(r["passed"])]
    lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines) + "\n"
