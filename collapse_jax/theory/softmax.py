"""Softmax lemmas of appendix B.1: Lemma B.1, Lemma B.2 (Figure 9) and Lemma B.4.

float64 references are computed in numpy (no x64 needed); reduced precisions go through
``Policy.softmax`` (the decoder's own softmax, with the policy's dtypes and rounding).
Distances are the paper's total variation delta(p, q) = sum |p - q|, i.e. the L1 distance
with NO factor 1/2 (``metrics.total_variation``); every 'tv_*' key holds that number.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import metrics
from collapse_jax.precision import Policy, get_policy

E = math.e
B4_LIMIT = 2.0 * (E - 1.0) / (E + 1.0)  # 0.9242343145200195


def softmax_np(x_N: np.ndarray) -> np.ndarray:
  """float64 softmax over the last axis (max-subtracted). [..., N] -> [..., N]."""
  x = np.asarray(x_N, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _padded(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of any lengths -> (float64 [R, max_len] right-padded with 0, bool mask [R, max_len])."""
  width = max(len(r) for r in rows)
  x_RN = np.zeros((len(rows), width), np.float64)
  mask_RN = np.zeros((len(rows), width), bool)
  for r, row in enumerate(rows):
    x_RN[r, : len(row)] = row
    mask_RN[r, : len(row)] = True
  return x_RN, mask_RN


def pair_tv(ps: Sequence[np.ndarray], qs: Sequence[np.ndarray]) -> np.ndarray:
  """delta(p_r, q_r) = sum |p_r - q_r| (``metrics.total_variation``, no 1/2) of each pair
  of equal-length probability rows, in float64 whatever the process' x64 setting. -> [R].
  The rows are zero-padded to one batch; padding adds |0 - 0| = 0 to each sum."""
  p_RN, _ = _padded(ps)
  q_RN, _ = _padded(qs)
  with jax.enable_x64(True):
    return np.asarray(metrics.total_variation(jnp.asarray(p_RN), jnp.asarray(q_RN)), np.float64)


@functools.lru_cache(maxsize=None)
def _softmax_fn(policy: Policy):
  return jax.jit(lambda s, m: policy.softmax(s, m))


def policy_softmax_rows(policy: Policy | str, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Softmax of each 1-D row through ``policy.softmax`` (its dtypes and rounding).

  The rows (float64, any lengths) are rounded to the policy's storage dtype (round to
  nearest even, numpy/ml_dtypes), right-padded into one [R, max_len] batch and masked,
  exactly as the decoder masks keys. Returns the stored probabilities of each row,
  converted exactly to float64 (list of [n_r])."""
  policy = get_policy(policy)
  policy.check_available()
  scores_RN, mask_RN = _padded(rows)
  stored = scores_RN.astype(policy.storage_dtype)
  p_RN = np.asarray(_softmax_fn(policy)(jnp.asarray(stored), jnp.asarray(mask_RN)))
  p_RN = p_RN.astype(np.float64)
  return [p_RN[r, : len(row)] for r, row in enumerate(rows)]


def first_zero(ns: Sequence[int], values_SR: np.ndarray) -> int | None:
  """First n at which every repeat (axis 1) is exactly 0; None if never."""
  v = np.asarray(values_SR, np.float64).reshape(len(ns), -1)
  hit = np.all(v == 0, axis=1)
  return int(ns[int(np.argmax(hit))]) if hit.any() else None


def log_lengths(lo: int, hi: int, num: int, even: bool = False) -> list[int]:
  """Log-spaced integer lengths in [lo, hi], always including 1e3, 1e4 and 1e5 when in
  range (``even``: each n rounded up to even, for Lemma B.4)."""
  ns = set(np.unique(np.round(np.logspace(np.log10(lo), np.log10(hi), num)).astype(int)).tolist())
  ns |= {v for v in (1000, 10000, 100000) if lo <= v <= hi}
  if even:
    ns = {n + (n % 2) for n in ns}
  return sorted(ns)


def _by_precision(precisions, xs, xstars):
  """(policy name, stored softmax rows of xs, of xstars) for each precision."""
  for pol in map(get_policy, precisions):
    p = policy_softmax_rows(pol, list(xs) + list(xstars))
    yield pol.name, p[: len(xs)], p[len(xs):]


# -- Lemma B.1 ---------------------------------------------------------------------------
def lemma_b1_sweep(ns: Sequence[int], *, b: float = 1.0, c: float = 1.0, seed: int = 0,
                   precisions: Sequence[str | Policy] = ()) -> dict:
  """softmax(x)_n - softmax(x*)_{n+1} for x = [a, c] (length n) and x* = [a, b, c].

  ``a`` ~ U[0,1]^(n-1) are prefixes of ONE random vector (nested sequences), so the exact
  gap e^(b+c) / (S (S + e^b)), S = sum_k e^(a_k) + e^c, is strictly decreasing in n.
  Returns {'n' [S], 'w_x' [S], 'w_xstar' [S], 'gap' [S] (float64 numpy),
  'gap_closed_form' [S], 'gap_by_precision': {name: [S]} (stored weights, exact in f64),
  'w_x_by_precision': {name: [S]}, 'first_zero_by_precision': {name: n or None}}."""
  ns = [int(n) for n in ns]
  a_long = np.random.default_rng(seed).uniform(0.0, 1.0, max(ns) - 1)
  xs = [np.concatenate([a_long[: n - 1], [c]]) for n in ns]
  xstars = [np.concatenate([a_long[: n - 1], [b, c]]) for n in ns]
  w_x = np.array([softmax_np(x)[-1] for x in xs])
  w_xs = np.array([softmax_np(x)[-1] for x in xstars])
  S = np.array([np.exp(a_long[: n - 1]).sum() + math.exp(c) for n in ns])
  out = {"n": np.array(ns), "b": b, "c": c, "seed": seed, "w_x": w_x, "w_xstar": w_xs,
         "gap": w_x - w_xs, "gap_closed_form": math.exp(b + c) / (S * (S + math.exp(b))),
         "gap_by_precision": {}, "w_x_by_precision": {}, "first_zero_by_precision": {}}
  for name, p, ps in _by_precision(precisions, xs, xstars):
    g = np.array([p[i][-1] - ps[i][-1] for i in range(len(ns))])
    out["gap_by_precision"][name] = g
    out["w_x_by_precision"][name] = np.array([row[-1] for row in p])
    out["first_zero_by_precision"][name] = first_zero(ns, g)
  return out


def lemma_b1_facts(r: dict) -> dict:
  """The lemma's float64 statements on a ``lemma_b1_sweep`` result: every gap > 0, strictly
  decreasing in n, and the largest relative error against the closed form."""
  g = r["gap"]
  return {"all_positive": bool(np.all(g > 0)), "strictly_decreasing": bool(np.all(np.diff(g) < 0)),
          "max_rel_error_vs_closed_form": float(np.max(np.abs(g / r["gap_closed_form"] - 1)))}


# -- Lemma B.2 / Figure 9 ----------------------------------------------------------------
def lemma_b2_pair(n: int, seed: int, k: int = 200, noise: float = 0.1):
  """x ~ U[0,1]^n and x* = x + U[0, noise] on the first min(k, n) entries (float64 [n] each).
  Each (n, seed) draws independently (generator seeded with (seed, n))."""
  rng = np.random.default_rng([seed, n])
  x = rng.uniform(0.0, 1.0, n)
  xs = x.copy()
  kk = min(k, n)
  xs[:kk] += rng.uniform(0.0, noise, kk)
  return x, xs


def lemma_b2_mean_field(n: int, k: int = 200, noise: float = 0.1, grid: int = 20001) -> float:
  """Independent estimate of E[delta] for Lemma B.2's construction (no sampling).

  Replace the partition functions by their means, Z = n m1 and Z* = Z + k m1 (E e^eta - 1)
  with m1 = E e^x = e - 1 and E e^eta = (e^noise - 1)/noise; then
    delta ~= (n - k) m1 |1/Z - 1/Z*|  +  k m1 E_eta |1/Z - e^eta / Z*|,
  the second expectation by quadrature over eta ~ U[0, noise]. First order in 1/n this is
  2 (Z* - Z)(Z - Z_k) / (Z Z*), i.e. about 20/n for k = 200, noise = 0.1."""
  kk = min(k, n)
  m1 = E - 1.0
  z = n * m1
  zs = z + kk * m1 * ((math.exp(noise) - 1.0) / noise - 1.0)
  eta = np.linspace(0.0, noise, grid)
  inner = np.abs(1.0 / z - np.exp(eta) / zs)
  trapezoid = getattr(np, "trapezoid", None) or np.trapz
  e_inner = float(trapezoid(inner, eta) / noise)
  return (n - kk) * m1 * abs(1.0 / z - 1.0 / zs) + kk * m1 * e_inner


def lemma_b2_sweep(ns: Sequence[int], seeds: Sequence[int] = (0, 1, 2, 3, 4), *, k: int = 200,
                   noise: float = 0.1, precisions: Sequence[str | Policy] = ()) -> dict:
  """delta(softmax(x), softmax(x*)) for every n and seed.

  Returns {'n' [S], 'tv_float64' [S, R] (numpy float64 reference), 'mean_field' [S],
  'tv_by_precision': {name: [S, R]} (stored probabilities through the policy's softmax),
  'first_zero_by_precision': {name: first n where all seeds give exactly 0, or None},
  'underflow_by_precision': {name: [S] fraction of probabilities stored as exact 0}}."""
  ns = [int(n) for n in ns]
  R = len(seeds)
  pairs = [lemma_b2_pair(n, s, k, noise) for n in ns for s in seeds]
  xs, xstars = [x for x, _ in pairs], [x for _, x in pairs]
  tv64 = pair_tv([softmax_np(x) for x in xs], [softmax_np(x) for x in xstars])
  out = {"n": np.array(ns), "seeds": list(seeds), "k": k, "noise": noise,
         "tv_float64": tv64.reshape(len(ns), R),
         "mean_field": np.array([lemma_b2_mean_field(n, k, noise) for n in ns]),
         "tv_by_precision": {}, "first_zero_by_precision": {}, "underflow_by_precision": {}}
  for name, p, ps in _by_precision(precisions, xs, xstars):
    tv = pair_tv(p, ps).reshape(len(ns), R)
    out["tv_by_precision"][name] = tv
    out["first_zero_by_precision"][name] = first_zero(ns, tv)
    out["underflow_by_precision"][name] = np.array([np.mean(row == 0) for row in p]).reshape(
        len(ns), R).mean(axis=1)
  return out


def lemma_b2_facts(r: dict) -> dict:
  """float64 seed means and the mean-field estimate at n = 1e3 and 1e4 (None when not
  swept), and the log-log slope of the mean over n >= 1e3, of a ``lemma_b2_sweep`` result."""
  ns, mean = list(r["n"]), r["tv_float64"].mean(axis=1)
  at = lambda v, n: float(v[ns.index(n)]) if n in ns else None
  big = np.asarray(ns) >= 1000
  slope = (float(np.polyfit(np.log(np.asarray(ns)[big]), np.log(mean[big]), 1)[0])
           if big.sum() >= 2 else None)
  return {"mean": mean, "mean_at_1e3": at(mean, 1000), "mean_at_1e4": at(mean, 10000),
          "mean_at_1e5": at(mean, 100000), "mean_field_at_1e3": at(r["mean_field"], 1000),
          "mean_field_at_1e4": at(r["mean_field"], 10000), "slope_n_ge_1e3": slope}


# -- Lemma B.4 ---------------------------------------------------------------------------
def lemma_b4_pair(n: int):
  """x = (1,0,1,0,...), x* = (0,1,0,1,...), float64 [n] each (n even)."""
  if n % 2:
    raise ValueError(f"Lemma B.4 needs an even n, got {n}")
  x = np.tile([1.0, 0.0], n // 2)
  return x, 1.0 - x


def lemma_b4_sweep(ns: Sequence[int], precisions: Sequence[str | Policy] = ()) -> dict:
  """delta for the alternating pair at every even n: float64 and per precision.
  Returns {'n', 'limit' (2(e-1)/(e+1)), 'tv_float64' [S], 'abs_error_float64' [S],
  'tv_by_precision': {name: [S]}, 'first_zero_by_precision'}."""
  ns = [int(n) for n in ns]
  pairs = [lemma_b4_pair(n) for n in ns]
  xs, xstars = [x for x, _ in pairs], [x for _, x in pairs]
  tv = pair_tv([softmax_np(x) for x in xs], [softmax_np(x) for x in xstars])
  out = {"n": np.array(ns), "limit": B4_LIMIT, "tv_float64": tv,
         "abs_error_float64": np.abs(tv - B4_LIMIT), "tv_by_precision": {},
         "first_zero_by_precision": {}}
  for name, p, ps in _by_precision(precisions, xs, xstars):
    t = pair_tv(p, ps)
    out["tv_by_precision"][name] = t
    out["first_zero_by_precision"][name] = first_zero(ns, t)
  return out


def lemmas_summary(b1: dict, b2: dict, b4: dict) -> dict:
  """The numbers BUILD_NOTES quotes, from the three sweeps (results.json 'summary')."""
  f1, f2 = lemma_b1_facts(b1), lemma_b2_facts(b2)
  precs = list(b1["gap_by_precision"])
  return {
      "b2_float64_mean_at_1e3": f2["mean_at_1e3"], "b2_float64_mean_at_1e4": f2["mean_at_1e4"],
      "b2_float64_mean_at_1e5": f2["mean_at_1e5"],
      "b2_mean_field_at_1e3": lemma_b2_mean_field(1000, b2["k"], b2["noise"]),
      "b2_mean_field_at_1e4": lemma_b2_mean_field(10000, b2["k"], b2["noise"]),
      "b2_first_zero_by_precision": b2["first_zero_by_precision"],
      "b4_limit": B4_LIMIT,
      "b4_max_abs_error_float64": float(b4["abs_error_float64"].max()),
      "b4_first_zero_by_precision": b4["first_zero_by_precision"],
      "b1_all_positive_float64": f1["all_positive"],
      "b1_strictly_decreasing_float64": f1["strictly_decreasing"],
      "b1_max_rel_error_vs_closed_form": f1["max_rel_error_vs_closed_form"],
      "b1_first_zero_by_precision": b1["first_zero_by_precision"],
      "b1_negative_gap_count_by_precision": {
          p: int(np.sum(b1["gap_by_precision"][p] < 0)) for p in precs},
      "b1_underflow_first_n_by_precision": {
          p: first_zero(b1["n"], b1["w_x_by_precision"][p]) for p in precs},
  }
