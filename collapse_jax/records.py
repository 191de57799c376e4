"""Records: engine metrics -> per-run summaries, CSV rows, compact per-n records and
cross-checks. The only place records are built; results.py writes them.

A run record (:func:`summarize`) holds, for one (model, policy, pair set, seed), per swept n
(arrays [S] over ``lengths``): the final output's distances ``linf``/``l1``/``max_ulp``,
``bitwise_equal``, ``nonfinite`` and ``absmax`` (max |y_n|, which sets the dtype's ulp); the
same per residual layer (``layers``) and for the last layer's heads
(``last_layer_heads``); and the onsets: ``collapse_onset`` (first equal n) and
``sustained_onset`` (first n from which every later n is equal), -1 if none.
"""
from __future__ import annotations

import numpy as np

from collapse_jax import metrics


def _onsets(equal_S, lengths) -> tuple[int, int]:
  return (int(metrics.collapse_onset(equal_S, lengths)),
          int(metrics.sustained_onset(equal_S, lengths)))


def summarize(raw: dict, lengths, seed_index: int) -> dict:
  """One seed's engine metrics (``engines.pair_metrics`` with a leading seed axis) -> a run
  record of numpy arrays over n and integer onsets."""
  r = {k: v[seed_index] for k, v in raw.items()}
  lengths = np.asarray(lengths)
  y_on, y_sus = _onsets(r["y_bitwise_equal"], lengths)
  layers = []
  for l in range(r["layer_linf"].shape[0]):
    on, sus = _onsets(r["layer_bitwise_equal"][l], lengths)
    layers.append({"layer": l, "linf": r["layer_linf"][l], "l1": r["layer_l1"][l],
                   "max_ulp": r["layer_max_ulp"][l], "bitwise_equal": r["layer_bitwise_equal"][l],
                   "nonfinite": r["layer_nonfinite"][l],
                   "collapse_onset": on, "sustained_onset": sus})
  head_onsets = [_onsets(r["head_bitwise_equal"][h], lengths)[0]
                 for h in range(r["head_linf"].shape[0])]
  all_heads = r["head_bitwise_equal"].all(0)
  return {
      "lengths": lengths,
      "linf": r["y_linf"], "l1": r["y_l1"], "max_ulp": r["y_max_ulp"],
      "bitwise_equal": r["y_bitwise_equal"],
      "collapse_onset": y_on, "sustained_onset": y_sus,
      "absmax": r["y_absmax"],
      "nonfinite": r["y_nonfinite"], "nonfinite_total": int(r["y_nonfinite"].sum() +
                                                            r["layer_nonfinite"].sum()),
      "layers": layers,
      "last_layer_heads": {"linf_mean": r["head_linf"].mean(0), "linf_min": r["head_linf"].min(0),
                           "linf_max": r["head_linf"].max(0),
                           "all_heads_equal": all_heads,
                           "any_head_equal": r["head_bitwise_equal"].any(0),
                           "nonfinite": r["head_nonfinite"].sum(0),
                           "absmax": r["head_absmax"],
                           "collapse_onset": _onsets(all_heads, lengths)[0],
                           "sustained_onset": _onsets(all_heads, lengths)[1],
                           "collapse_onset_per_head": head_onsets},
  }


# A record's keys that describe the run rather than its numbers (sweep.run_grid sets them):
# a resumed or repeated run equals another with these left out.
RUN_KEYS = ("seconds", "device", "rss_gib", "peak_rss_gib")

CSV_COLUMNS = ("dtype", "heads", "seed", "engine", "n", "linf", "l1", "max_ulp", "bitwise_equal",
               "nonfinite", "head_linf_mean", "head_linf_min", "head_linf_max")


def csv_columns(num_layers: int) -> list[str]:
  """CSV header: CSV_COLUMNS then layer0_linf .. layer{L}_linf."""
  return list(CSV_COLUMNS) + [f"layer{l}_linf" for l in range(num_layers + 1)]


def csv_rows(record: dict):
  """Rows (one per n) of a run record with its dtype/heads/seed/engine keys."""
  h = record["last_layer_heads"]
  for i, n in enumerate(record["lengths"]):
    row = {k: record[k] for k in ("dtype", "heads", "seed", "engine")}
    row.update(n=int(n), linf=float(record["linf"][i]), l1=float(record["l1"][i]),
               max_ulp=int(record["max_ulp"][i]), bitwise_equal=bool(record["bitwise_equal"][i]),
               nonfinite=int(record["nonfinite"][i]), head_linf_mean=float(h["linf_mean"][i]),
               head_linf_min=float(h["linf_min"][i]), head_linf_max=float(h["linf_max"][i]))
    for layer in record["layers"]:
      row[f"layer{layer['layer']}_linf"] = float(layer["linf"][i])
    yield row


def min_info(lengths, dist) -> dict:
  """Smallest finite distance, the n where it occurs, and the distance at the largest n."""
  d = np.asarray(dist, np.float64)
  fin = np.isfinite(d)
  if not fin.any():
    return {"min": float("nan"), "n_at_min": -1, "at_max_n": float(d[-1])}
  i = int(np.argmin(np.where(fin, d, np.inf)))
  return {"min": float(d[i]), "n_at_min": int(np.asarray(lengths)[i]), "at_max_n": float(d[-1])}


def equal_n(lengths, mask) -> list[int]:
  """The n at which ``mask`` (bool [S]) holds."""
  return [int(n) for n in np.asarray(lengths)[np.asarray(mask, bool)]]


def compact(rec: dict) -> dict:
  """A run record in the real-model results' form: per-n distances, the equal n as lists
  (not masks), onsets, minima and non-finite counts, for y, the last layer's heads and every
  residual layer. Keeps the record's labels (setting, dtype, engine, ...)."""
  n = rec["lengths"]
  h, y = rec["last_layer_heads"], rec
  labels = {k: v for k, v in rec.items() if not isinstance(v, (np.ndarray, list, dict))
            and k not in ("collapse_onset", "sustained_onset", "nonfinite_total")}
  layers = []
  for lay in rec["layers"]:
    layers.append({"layer": lay["layer"], "linf": lay["linf"],
                   "equal_n": equal_n(n, lay["bitwise_equal"]),
                   "collapse_onset": lay["collapse_onset"],
                   "sustained_onset": lay["sustained_onset"],
                   "nonfinite_n": int((np.asarray(lay["nonfinite"]) > 0).sum()),
                   **min_info(n, lay["linf"])})
  nf_layer = [l["nonfinite_n"] for l in layers]
  return {
      **labels, "lengths": np.asarray(n).tolist(),
      "y": {"linf": y["linf"], "l1": y["l1"], "max_ulp": np.asarray(y["max_ulp"], np.int64),
            "equal_n": equal_n(n, y["bitwise_equal"]), "collapse_onset": y["collapse_onset"],
            "sustained_onset": y["sustained_onset"], "absmax": y["absmax"],
            "nonfinite_n": int((np.asarray(y["nonfinite"]) > 0).sum()), **min_info(n, y["linf"])},
      "last_layer_heads": {
          "linf_mean": h["linf_mean"], "linf_min": h["linf_min"], "linf_max": h["linf_max"],
          "absmax": h["absmax"], "all_heads_equal_n": equal_n(n, h["all_heads_equal"]),
          "any_head_equal_n": equal_n(n, h["any_head_equal"]),
          "collapse_onset": h["collapse_onset"], "sustained_onset": h["sustained_onset"],
          "collapse_onset_per_head": h["collapse_onset_per_head"],
          "nonfinite_n": int((np.asarray(h["nonfinite"]) > 0).sum()),
          **min_info(n, h["linf_mean"])},
      "layers": layers,
      "nonfinite": {
          "total_values": int(np.sum(y["nonfinite"]) + sum(np.sum(l["nonfinite"])
                                                            for l in rec["layers"])
                              + np.sum(h["nonfinite"])),
          "n_with_nonfinite_y": int((np.asarray(y["nonfinite"]) > 0).sum()),
          "first_layer_with_nonfinite": next((i for i, c in enumerate(nf_layer) if c), -1),
          "nonfinite_n_per_layer": nf_layer},
  }


def cross_check(exact: dict, one_pass: dict) -> dict:
  """Two compact records of the same pair set, dtype and n (exact-length forwards vs a
  one-pass engine): per-n distances, their ratio one_pass/exact, the worst ratio (max of
  r and 1/r over n where both are positive), the n with identical distances, and the equal n
  of each."""
  out = {"engine": one_pass["engine"], "lengths": exact["lengths"]}
  for key, (part, field) in (("heads_mean", ("last_layer_heads", "linf_mean")),
                             ("y", ("y", "linf"))):
    e = np.asarray(exact[part][field], np.float64)
    o = np.asarray(one_pass[part][field], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
      ratio = np.where((e > 0) & (o > 0), o / e, np.nan)
    fin = np.isfinite(ratio)
    out[key] = {"exact": e, "one_pass": o, "ratio_one_pass_over_exact": ratio,
                "max_ratio": float(np.max(np.maximum(ratio, 1 / ratio)[fin])) if fin.any()
                else float("nan"),
                "bits_identical_distance_n": [int(n) for n, a, b in
                                              zip(exact["lengths"], e, o) if a == b]}
  out["equal_n_exact"] = exact["y"]["equal_n"]
  out["equal_n_one_pass"] = one_pass["y"]["equal_n"]
  return out


def compact_line(r: dict) -> str:
  """One console line for a compact record (:func:`compact`): onsets, minima, non-finite."""
  h, y, nf = r["last_layer_heads"], r["y"], r["nonfinite"]
  first = nf["first_layer_with_nonfinite"]
  where = (f" ({f'from layer {first}, ' if first >= 0 else ''}y at {nf['n_with_nonfinite_y']} n)"
           if nf["total_values"] else "")
  return (f"({r['pairs']}) {r['dtype']:>14s} seed={r['seed']}"
          + (f" window={r['window']}" if "window" in r else "")
          + (f" (thinned grid, {len(r['lengths'])} n" + (
              f", every n in [{r['refined'].replace(':', ', ')})" if r["refined"] else "") + ")"
             if r.get("grid") == "thinned" else "")
          + f" [{r['engine']}] heads: first equal n={h['collapse_onset']} sustained="
          f"{h['sustained_onset']} min mean linf={float(h['min']):.4g} at n={h['n_at_min']} | y: first "
          f"equal n={y['collapse_onset']} sustained={y['sustained_onset']} min linf={float(y['min']):.4g}"
          f" at n={y['n_at_min']} | nonfinite values={nf['total_values']}{where}")


def cross_check_line(c: dict) -> str:
  """One console line for a :func:`cross_check` entry (with its pairs/dtype labels)."""
  return (f"cross-check ({c['pairs']}) {c['dtype']}"
          + (f" window={c['window']}" if "window" in c else "")
          + f": exact vs {c['engine']} max distance ratio heads "
          f"{c['heads_mean']['max_ratio']:.4g}, y {c['y']['max_ratio']:.4g}; equal n exact "
          f"{c['equal_n_exact']} one-pass {c['equal_n_one_pass']}")
