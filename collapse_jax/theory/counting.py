"""Counting (section 6, appendix B.3): Proposition 6.1 / B.9 and Corollary 6.2 / B.10.

  * Prop. B.9 -- ``ratio_invariance``: no PE + no causal mask => sequences with equal token
    ratios ('10' vs '1100') get the same representations; measured bit for bit and
    relative to the reference's magnitude, per depth.
  * Cor. B.10 -- ``counting_collapse``: one causal pass over [BOS, a, a, ..., a] finds counts
    c and c+1 whose final representations are bitwise equal in a precision.

``b9_models`` / ``b10_model`` are the settings experiments.counting and the scorecard share
(the app builds the same configs from its flags with ``b9_fixed`` / ``b10_fixed``).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from collapse_jax import metrics, model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy, get_policy


# -- Proposition B.9 ---------------------------------------------------------------------
def base_vocab(base: str) -> int:
  """The vocabulary of a Prop. B.9 base sequence of digit tokens: its largest digit + 1. A
  base that is not a non-empty string of the digits 0-9 is a one-line ValueError."""
  if not base or any(ch not in "0123456789" for ch in base):
    raise ValueError(f"--base must be a non-empty string of the digits 0-9, got {base!r}")
  return max(int(ch) for ch in base) + 1


def b9_fixed(base: str) -> dict:
  """The DecoderConfig fields Prop. B.9 fixes: the digits of ``base`` as vocabulary, no PE,
  no causal mask (the causal model of ``b9_models_for`` is the same config made causal)."""
  return dict(vocab_size=base_vocab(base), pe="none", causal=False)


def init_params(cfg: DecoderConfig, seed: int = 0) -> dict:
  """float32 weights of ``cfg`` from ``PRNGKey(seed)``: the B.9 and B.10 models' weights."""
  return model.init_params(cfg, jax.random.PRNGKey(seed))


def b9_models(*, layers: int = 2, d_model: int = 32, heads: int = 2, base: str = "10",
              seed: int = 0) -> dict:
  """Token models for Prop. B.9 (pe='none', vocabulary = the digits of ``base``), one set of
  float32 weights for both masks (the mask has no parameters):
  {False: (bidirectional cfg, params), True: (causal cfg, params)}."""
  return b9_models_for(DecoderConfig(num_layers=layers, d_model=d_model, num_heads=heads,
                                     **b9_fixed(base)), seed)


def b9_models_for(cfg: DecoderConfig, seed: int = 0) -> dict:
  """``b9_models`` for a bidirectional config already built (``b9_fixed`` fields; the app
  builds it from its flags): {False: (cfg, params), True: (causal cfg, params)}."""
  params = init_params(cfg, seed)
  return {False: (cfg, params), True: (cfg.replace(causal=True), params)}


def expand(base: str, m: int, arrangement: str) -> str:
  """'blocks': every symbol repeated m times in place ('10' -> '1100');
  'tiled': the whole string repeated m times ('10' -> '1010'). Same token ratio."""
  if arrangement == "blocks":
    return "".join(ch * m for ch in base)
  if arrangement == "tiled":
    return base * m
  raise ValueError(f"unknown arrangement {arrangement!r}; valid: blocks, tiled")


@functools.lru_cache(maxsize=None)
def _tok_forward(cfg: DecoderConfig, policy: Policy):
  return jax.jit(lambda p, t: model.forward(cfg, policy, p, t, collect=("residual",)))


def token_representations(cfg: DecoderConfig, policy: Policy, params, seq: str) -> np.ndarray:
  """Residual stream v^(0..L) and y for a string of digit tokens: [L+2, N, D] stored dtype
  (index L+1 is the final normalised output y)."""
  t = jnp.asarray([[int(ch) for ch in seq]], jnp.int32)
  out = _tok_forward(cfg, policy)(params, t)
  return np.concatenate([np.asarray(out["residual"])[:, 0], np.asarray(out["y"])[None, 0]])


def ratio_invariance(cfg: DecoderConfig, policy: Policy | str, params, *, base: str = "10",
                     multipliers: Sequence[int] = (2, 3, 4, 8),
                     arrangements: Sequence[str] = ("blocks", "tiled")) -> list[dict]:
  """Compare the representations of ``base`` and of each ratio-preserving expansion.

  Non-causal: every position of the expansion is compared with the base position holding
  the same symbol (position-free model => same symbol, same representation). Causal: the
  LAST position (the next-token representation; base and expansions end in the same
  symbol) is compared. Per depth (v0..vL, and 'y'): bitwise equality, max ULP distance,
  max |difference| and that divided by max |reference| ('max_rel_diff'; compare with the
  storage dtype's 'eps'). Returns one row per (multiplier, arrangement).

  Why equality can be exact in floating point: per-token ops (norms, projections, MLP) see
  identical inputs; the only cross-token ops are the softmax (max: exact; sum of e_j) and
  sum_j p_j v_j. With multiplicity m, real arithmetic gives p_j -> p_j / m. The stored
  probability round(p/m) equals round(p)/m exactly when m is a power of two (scaling by
  2^-k commutes with rounding away from the subnormal range), and the f32 accumulation
  differences of the longer sums are absorbed when the result is rounded to a narrower
  storage dtype (bf16/f16). For other m, or f32 storage, equality holds only to rounding."""
  policy = get_policy(policy)
  params = policy.cast_params(params)
  ref = token_representations(cfg, policy, params, base)
  pos_of = {ch: base.index(ch) for ch in set(base)}
  rows = []
  for m in multipliers:
    for arr in arrangements:
      seq = expand(base, m, arr)
      rep = token_representations(cfg, policy, params, seq)
      if cfg.causal:
        a, b = rep[:, -1:], ref[:, -1:]
      else:
        a = rep
        b = ref[:, [pos_of[ch] for ch in seq]]
      eq = np.asarray(metrics.bitwise_equal(jnp.asarray(a), jnp.asarray(b), axis=(1, 2)))
      ulp = np.asarray(metrics.ulp_distance(jnp.asarray(a), jnp.asarray(b))).max(axis=(1, 2))
      diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=(1, 2))
      scale = np.abs(b.astype(np.float64)).max(axis=(1, 2))
      rows.append({"policy": policy.name, "causal": cfg.causal, "multiplier": m,
                   "arrangement": arr, "sequence": seq,
                   "depth": ["v0"] + [f"v{l}" for l in range(1, cfg.num_layers + 1)] + ["y"],
                   "bitwise_equal": eq.tolist(), "max_ulp": ulp.astype(np.int64).tolist(),
                   "max_abs_diff": diff.tolist(),
                   "max_rel_diff": (diff / np.where(scale > 0, scale, 1.0)).tolist(),
                   "eps": float(ml_dtypes.finfo(policy.storage_dtype).eps)})
  return rows


def b9_sweep(models: dict, policies: Sequence[Policy | str], *, base: str = "10",
             multipliers: Sequence[int] = (2, 3)) -> dict:
  """``ratio_invariance`` for both masks of ``b9_models`` and every policy:
  {'bidirectional/<policy>': rows, 'causal/<policy>': rows}."""
  out = {}
  for causal in (False, True):
    cfg, params = models[causal]
    for pol in map(get_policy, policies):
      out[f"{'causal' if causal else 'bidirectional'}/{pol.name}"] = ratio_invariance(
          cfg, pol, params, base=base, multipliers=multipliers)
  return out


def b9_summary(b9: dict) -> dict:
  """Per ``b9_sweep`` key: the (multiplier, arrangement) bitwise equal at every depth, the
  largest relative difference at depth 1 and at depths >= 2 (None with one layer), eps."""
  worst = lambda rows, sl: float(max(max(r["max_rel_diff"][sl]) for r in rows))
  return {k: {"all_bitwise_equal_every_depth": [(r["multiplier"], r["arrangement"])
                                                for r in rows if all(r["bitwise_equal"])],
              "max_rel_diff_depth1": worst(rows, slice(1, 2)),
              "max_rel_diff_depth>=2": (worst(rows, slice(2, None))
                                        if len(rows[0]["depth"]) > 3 else None),
              "eps": rows[0]["eps"]}
          for k, rows in b9.items()}


# -- Corollary B.10 ----------------------------------------------------------------------
def b10_fixed(N: int) -> dict:
  """The DecoderConfig fields Cor. B.10 fixes for sequences up to ``N``: the vocabulary
  {BOS=0, a=1, 2}, a causal mask and max_len >= N."""
  return dict(vocab_size=3, causal=True, max_len=max(4096, N))


def b10_model(N: int, *, layers: int = 1, d_model: int = 16, heads: int = 1,
              pe: str = "rope", seed: int = 0):
  """The causal token model of Cor. B.10 (``b10_fixed``) sized for sequences up to ``N``:
  (cfg, float32 params)."""
  cfg = DecoderConfig(num_layers=layers, d_model=d_model, num_heads=heads, pe=pe, **b10_fixed(N))
  return cfg, init_params(cfg, seed)


@functools.lru_cache(maxsize=None)
def _y_fn(cfg: DecoderConfig, policy: Policy):
  return jax.jit(lambda p, t: model.forward(cfg, policy, p, t)["y"])


def repeated_token_sequence(N: int, bos: int = 0, a: int = 1) -> np.ndarray:
  """[BOS, a, a, ..., a] of length N (int32 [1, N]); the prefix of length n holds n-1 a's."""
  t = np.full((1, N), a, np.int32)
  t[0, 0] = bos
  return t


def counting_collapse(cfg: DecoderConfig, policy: Policy | str, params, N: int, *,
                      reference: Policy | str | None = "float64", bos: int = 0, a: int = 1,
                      confirm: int = 5) -> dict:
  """One causal pass over [BOS, a * (N-1)]: row n-1 is the last-token output y for the
  length-n prefix (n-1 a's). Finds lengths n with y_n == y_{n+1} bit for bit, i.e. counts
  c = n-1 and c+1 that the model cannot tell apart: any readout gives both the same answer,
  so at least one count is wrong.

  Rows of one masked causal pass need not match exact-length forwards bit for bit (matmul
  blocking depends on shape), so the first ``confirm`` collapsed n are re-checked with two
  exact-length forwards. ``reference`` (float64, needs x64) gives the distance the
  infinite-precision-like model keeps between the two. Returns {'policy', 'N', 'lengths'
  [N-1], 'equal' [N-1], 'linf' [N-1], onsets, 'fraction_equal', 'reference_linf' [N-1],
  'confirmed', 'wrong_count': {'n', 'counts', 'exact_length_confirmed', 'reference_linf'}}."""
  policy = get_policy(policy)
  cfg.check_length(N)
  t = repeated_token_sequence(N, bos, a)
  y_fn = lambda toks: np.asarray(_y_fn(cfg, policy)(policy.cast_params(params), jnp.asarray(toks)))
  y = y_fn(t)[0]  # [N, D]
  eq = np.asarray(metrics.bitwise_equal(jnp.asarray(y[:-1]), jnp.asarray(y[1:])))  # [N-1]
  lengths = np.arange(1, N)  # eq[j]: length j+1 vs j+2
  dist = np.abs(y[:-1].astype(np.float64) - y[1:].astype(np.float64)).max(-1)
  out = {"policy": policy.name, "N": N, "lengths": lengths, "equal": eq, "linf": dist,
         "first_collapse_n": int(metrics.collapse_onset(eq, lengths)),
         "sustained_collapse_n": int(metrics.sustained_onset(eq, lengths)),
         "fraction_equal": float(eq.mean())}
  if reference is not None:
    ref = get_policy(reference)
    if ref.needs_x64 and not jax.config.jax_enable_x64:
      out["reference"] = None
    else:
      yr = np.asarray(_y_fn(cfg, ref)(ref.cast_params(params), jnp.asarray(t)))[0]
      out["reference"] = ref.name
      out["reference_linf"] = np.abs(yr[:-1].astype(np.float64) - yr[1:]).max(-1)
  confirmed = []
  for n in lengths[eq][:confirm]:
    y1, y2 = y_fn(t[:, :n])[0, -1], y_fn(t[:, :n + 1])[0, -1]
    confirmed.append({"n": int(n), "exact_length_equal": bool(
        np.asarray(metrics.bitwise_equal(jnp.asarray(y1), jnp.asarray(y2))))})
  out["confirmed"] = confirmed
  first_conf = [c["n"] for c in confirmed if c["exact_length_equal"]]
  n_star = first_conf[0] if first_conf else out["first_collapse_n"]
  out["wrong_count"] = None if n_star < 0 else {
      "n": n_star, "counts": [n_star - 1, n_star],
      "exact_length_confirmed": bool(first_conf),
      "reference_linf": (float(out["reference_linf"][n_star - 1])
                         if out.get("reference") else None)}
  return out


def b10_summary(b10: dict) -> dict:
  """{policy: onsets, fraction equal, the wrong count and the exact-length confirmations}
  of ``counting_collapse`` results keyed by policy."""
  keys = ("first_collapse_n", "sustained_collapse_n", "fraction_equal", "wrong_count",
          "confirmed")
  return {p: {k: r[k] for k in keys} for p, r in b10.items()}
