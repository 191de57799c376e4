"""The spectral limit (appendix B.2): Lemma B.6 / B.7 and Proposition 5.2 / B.8.

With Lambda a causal row-stochastic attention matrix and Lambda~ = (Lambda + I)/2 (the
residual connection), Lambda~^L -> 1 e_1^T (a first column of ones) as L grows, at the rate
of the second-largest eigenvalue modulus lambda_2: deep enough, y_n depends only on v_1.
All matrices are float64 numpy [n, n].
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from collapse_jax.theory.softmax import softmax_np


def uniform_causal(n: int) -> np.ndarray:
  """Causal uniform attention Lambda_ij = 1/i for j <= i (1-indexed), [n, n] float64."""
  return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def random_causal(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
  """Causal softmax of N(0, scale^2) scores, [n, n] float64 row-stochastic, lower-triangular."""
  s = np.random.default_rng(seed).normal(0.0, scale, (n, n))
  s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
  return softmax_np(s)


def lazy(Lam_NN: np.ndarray) -> np.ndarray:
  """Lambda~ = (Lambda + I)/2."""
  return 0.5 * (np.asarray(Lam_NN, np.float64) + np.eye(len(Lam_NN)))


def stochastic_checks(Lam_NN: np.ndarray) -> dict:
  """Lemma B.6/B.7 facts of a causal row-stochastic matrix: max |row sum - 1|, max |upper
  triangle|, the eigenvalues (= diagonal, triangular) of Lambda~, the multiplicity of
  eigenvalue 1 and the second-largest eigenvalue modulus lambda_2 (largest below 1)."""
  lt = lazy(Lam_NN)
  eig = np.sort(np.abs(np.diag(lt)))[::-1]
  ones = int(np.sum(np.isclose(eig, 1.0, rtol=0, atol=1e-12)))
  return {"row_sum_err": float(np.abs(Lam_NN.sum(1) - 1).max()),
          "upper_max": float(np.abs(np.triu(Lam_NN, 1)).max()) if len(Lam_NN) > 1 else 0.0,
          "multiplicity_one": ones,
          "lambda2": float(eig[ones]) if ones < len(eig) else 1.0,
          "eig_lazy_sorted": eig}


def _last_row_and_target(n: int) -> tuple[np.ndarray, np.ndarray]:
  """e_n (the row of Lambda~^0 that governs y_n) and the limit row e_1, float64 [n] each."""
  row, target = np.zeros(n), np.zeros(n)
  row[-1] = 1.0
  target[0] = 1.0
  return row, target


def spectral_convergence(Lam_NN: np.ndarray, Ls: Sequence[int], *, full: bool = True) -> dict:
  """Distance of Lambda~^L from its limit 1 e_1^T (first column of ones) for every L in Ls.

  'err_last_row' [len(Ls)]: max_i |(Lambda~^L)_{n,i} - [i = 1]| (the row that governs
  d y_n / d v_i^(0) in Prop. B.8); 'err_full' [len(Ls)] the max over all entries (only if
  ``full``, O(n^3) per step). 'rate' = geometric-mean ratio err(L+1)/err(L) over the last
  quarter of the L range, to compare with 'lambda2' (the slowest non-unit eigenvalue)."""
  lt = lazy(Lam_NN)
  n = len(lt)
  Ls = sorted(int(L) for L in Ls)
  row, target = _last_row_and_target(n)
  P = np.eye(n) if full else None
  errs_row, errs_full, L_cur = [], [], 0
  for L in Ls:
    while L_cur < L:
      row = row @ lt
      if full:
        P = P @ lt
      L_cur += 1
    errs_row.append(np.abs(row - target).max())
    if full:
      errs_full.append(np.abs(P - np.outer(np.ones(n), target)).max())
  errs_row = np.array(errs_row)
  ck = stochastic_checks(Lam_NN)
  # Fit on the resolvable part (err above 1e-12, i.e. well above float64 round-off):
  # the last quarter of those L values.
  Ls_arr = np.array(Ls)
  ok = errs_row > 1e-12
  okL, oke = Ls_arr[ok], errs_row[ok]
  q = max(2, len(okL) // 4)
  rate = (float(np.exp(np.polyfit(okL[-q:], np.log(oke[-q:]), 1)[0]))
          if len(okL) >= 2 else float("nan"))
  return {"L": np.array(Ls), "err_last_row": errs_row,
          "err_full": np.array(errs_full) if full else None, "lambda2": ck["lambda2"],
          "multiplicity_one": ck["multiplicity_one"], "rate": rate,
          "row_sum_err": ck["row_sum_err"], "upper_max": ck["upper_max"]}


def layers_to_converge(Lam_NN: np.ndarray, tol: float = 1e-3, max_L: int = 100000) -> int:
  """Smallest L with max_i |(Lambda~^L)_{n,i} - [i=1]| < tol (last row only, O(n^2) per L)."""
  lt = lazy(Lam_NN)
  row, target = _last_row_and_target(len(lt))
  for L in range(1, max_L + 1):
    row = row @ lt
    if np.abs(row - target).max() < tol:
      return L
  return -1


def convergence_curves(ns: Sequence[int], Ls: Sequence[int], *, seed: int = 0,
                       tol: float = 1e-3, extra: Mapping[str, np.ndarray] | None = None) -> dict:
  """``spectral_convergence`` (full matrices for n <= 64) plus 'layers_to_tol' for uniform
  and random causal attention at each n ('uniform_n8', 'random_n8', ...), then for each
  named matrix in ``extra`` (e.g. a model's measured attention)."""
  mats = {f"{kind}_n{n}": m for n in ns
          for kind, m in (("uniform", uniform_causal(n)), ("random", random_causal(n, seed)))}
  out = {}
  for key, lam in {**mats, **(extra or {})}.items():
    r = spectral_convergence(lam, Ls, full=key in mats and len(lam) <= 64)
    r["layers_to_tol"] = layers_to_converge(lam, tol)
    out[key] = r
  return out


def convergence_depths(max_n: int, *, seed: int = 0, tol: float = 1e-3, points: int = 8) -> dict:
  """Layers needed to bring the last row within ``tol`` of its limit, and lambda_2, for
  uniform and random causal attention at ``points`` log-spaced n in [3, max_n]:
  {'n', 'uniform', 'random', 'lambda2_uniform', 'lambda2_random'} (lists over n)."""
  ns = sorted({int(v) for v in np.unique(np.round(np.logspace(0.5, np.log10(max_n), points)))})
  mats = {"uniform": [uniform_causal(m) for m in ns],
          "random": [random_causal(m, seed) for m in ns]}
  out = {"n": ns}
  for kind, lams in mats.items():
    out[kind] = [layers_to_converge(lam, tol) for lam in lams]
    out[f"lambda2_{kind}"] = [stochastic_checks(lam)["lambda2"] for lam in lams]
  return out
