"""Attribution: which rounding point makes n and n+1 indistinguishable (issue 26).

Words (used here, in ``experiments.attribution`` and ``figures.attribution``):

  base      the precision policy under study (a preset: every rounding point rounded).
  point     a rounding point (``precision.ROUNDING_POINTS``) that the model's y depends on
            (:func:`model_points`: the logits points never reach y, and Gemma's points
            only where the config has their option).
  group     a named set of points (:data:`GROUPS`).
  variant   a policy made from the base, named ``<base>:<kind>``:
              all            the base itself;
              none           no point rounded (the compute dtype everywhere);
              drop:p         every point but p (p's value flows on in the compute dtype,
                             into its dots too: ``Policy.operand_dtype``);
              only:p         p alone;
              drop:@g, only:@g  the same for a group;
              angles:float64 every point, RoPE's angles and cos/sin in float64
                             (``Policy.rope_angle_dtype``; rope models, with the groups).
            Weights stay in the base's param dtype in every variant: the model is the
            same model, only its activations' roundings change.
  onset     the first swept n whose y_n and y*_{n+1} are bitwise equal (-1: none).
  floor     min over n of the y distance (linf) in ulps of max |y_n| in the base's storage
            dtype: 1 means one storage step apart at the closest n.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from collapse_jax import metrics
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import ALL_POINTS, ROUNDING_POINTS, Policy

KINDS = ("drop", "only", "groups")
GROUPS = {
    "attention": ("qkv", "qk_norm", "rope", "scores", "attn_softcap", "probs", "heads",
                  "attn_out"),
    "mlp": ("mlp_hidden", "mlp_act", "mlp_out"),
    "residual": ("embed_scale", "embed", "residual"),
    "norms": ("norm", "post_norm", "final_norm"),
}
NOT_IN_Y = ("logits", "logit_softcap")  # after y: they never change it
OPTIONAL = {"embed_scale": "embed_scale", "qk_norm": "qk_norm", "post_norm": "post_norms",
            "attn_softcap": "attn_softcap"}  # point -> the DecoderConfig field that uses it


def model_points(cfg: DecoderConfig) -> list[str]:
  """The rounding points that y depends on in this model, in ROUNDING_POINTS' order."""
  out = []
  for p in ROUNDING_POINTS:
    if p in NOT_IN_Y or (p in OPTIONAL and not getattr(cfg, OPTIONAL[p])):
      continue
    if p == "rope" and cfg.pe != "rope":
      continue
    if p in ("mlp_hidden", "mlp_act", "mlp_out") and not cfg.use_mlp:
      continue
    out.append(p)
  return out


def _variant(base: Policy, kind: str, round_at) -> Policy:
  return dataclasses.replace(base, name=f"{base.name}:{kind}", round_at=frozenset(round_at))


def variants(base: Policy, kinds, points) -> list[Policy]:
  """The base ('all'), 'none', then for each kind in ``kinds`` (:data:`KINDS`) its variants
  over ``points`` (``groups``: drop and only for every group with a point in ``points``,
  and float64 RoPE angles where 'rope' is one)."""
  unknown = set(kinds) - set(KINDS)
  if unknown:
    raise ValueError(f"unknown attribution kinds {sorted(unknown)}; valid: {', '.join(KINDS)}")
  if set(base.round_at) != ALL_POINTS:
    raise ValueError(f"attribution starts from a preset that rounds at every point; "
                     f"{base.name!r} rounds at {len(base.round_at)} of {len(ALL_POINTS)}")
  out = [_variant(base, "all", ALL_POINTS), _variant(base, "none", ())]
  if "drop" in kinds:
    out += [_variant(base, f"drop:{p}", ALL_POINTS - {p}) for p in points]
  if "only" in kinds:
    out += [_variant(base, f"only:{p}", {p}) for p in points]
  if "groups" in kinds:
    for g, members in GROUPS.items():
      used = set(members) & set(points)
      if used:
        out += [_variant(base, f"drop:@{g}", ALL_POINTS - used), _variant(base, f"only:@{g}", used)]
    if "rope" in points:
      out.append(dataclasses.replace(_variant(base, "angles:float64", ALL_POINTS),
                                     rope_angle_dtype="float64"))
  return out


def kind_of(name: str) -> str:
  """'drop:norm' from 'bfloat16:drop:norm' (a variant's name)."""
  return name.split(":", 1)[1]


def octave_fractions(lengths, equal) -> dict[str, float]:
  """{'2^k': fraction of swept n in [2^k, 2^(k+1)) that are bitwise equal}, for every
  octave with a swept n."""
  n, e = np.asarray(lengths), np.asarray(equal, bool)
  lo = np.asarray([metrics.octave_lo(x) for x in n])
  return {f"2^{o.bit_length() - 1}": float(e[lo == o].mean()) for o in map(int, np.unique(lo))}


def _y_view(rec: dict):
  """(lengths [S], y linf [S], y absmax [S], y equal [S], onset, sustained onset, [(layer,
  equal [S])]) of a run record (``records.summarize``) or of its compact form
  (``records.compact``: real_model_collapse's, equal n as lists)."""
  n = np.asarray(rec["lengths"])
  if isinstance(rec.get("y"), dict):  # compact
    y, mask = rec["y"], lambda eq: np.isin(n, np.asarray(eq, int))
    return (n, y["linf"], y["absmax"], mask(y["equal_n"]), y["collapse_onset"],
            y["sustained_onset"], [(l["layer"], mask(l["equal_n"])) for l in rec["layers"]])
  return (n, rec["linf"], rec["absmax"], rec["bitwise_equal"], rec["collapse_onset"],
          rec["sustained_onset"], [(l["layer"], l["bitwise_equal"]) for l in rec["layers"]])


def summarize(rec: dict, storage_dtype) -> dict:
  """One variant's run record (``records.summarize``, or ``records.compact``) -> its
  attribution row: onset, sustained onset, equal count, the equal fraction per octave, the
  floor in ulps of |y| (storage dtype ``storage_dtype``) with its n, and the first layer (0 =
  the embedding's output v^(0)) whose residual differs at that n (-1: none differs)."""
  lengths, linf, absmax, equal, onset, sustained, layers = _y_view(rec)
  linf = np.asarray(linf, np.float64)
  ulp = 2 * np.asarray(metrics.half_ulp(np.asarray(absmax, np.float64), storage_dtype),
                       np.float64)
  ulps = np.where(np.isfinite(linf), linf / ulp, np.inf)
  i = int(np.argmin(ulps))
  differs = [int(l) for l, eq in layers if not bool(np.asarray(eq)[i])]
  return {"variant": kind_of(rec["dtype"]), "onset": int(onset), "sustained": int(sustained),
          "equal": int(np.asarray(equal).sum()), "n": int(len(lengths)),
          "octaves": octave_fractions(lengths, equal),
          "floor_ulps": float(ulps[i]), "floor_n": int(lengths[i]),
          "first_differing_layer": differs[0] if differs else -1}


def table(rows) -> list[str]:
  """Printable lines of :func:`summarize` rows: one per variant; the last columns are the
  equal fraction per octave of n."""
  octs = sorted({o for r in rows for o in r["octaves"]}, key=lambda o: int(o[2:]))
  lines = [f"{'variant':<22} {'onset':>6} {'equal':>9} {'floor ulps':>10} {'at n':>6} "
           f"{'layer':>5} " + " ".join(f"{o:>6}" for o in octs)]
  for r in rows:
    fr = " ".join(f"{r['octaves'].get(o, float('nan')):6.3f}" for o in octs)
    lines.append(f"{r['variant']:<22} {r['onset']:>6} {r['equal']:>4}/{r['n']:<4} "
                 f"{r['floor_ulps']:10.3g} {r['floor_n']:>6} {r['first_differing_layer']:>5} {fr}")
  return lines


def by_run(runs, storage_dtype) -> dict[str, list[dict]]:
  """Rows of real_model_collapse's runs under attribution variants, grouped by setting (and
  window mode where several): '<pairs>[ window=<w>]' -> [summarize(run) in the runs' order]."""
  out: dict[str, list[dict]] = {}
  windows = {r.get("window") for r in runs}
  for r in runs:
    key = r["pairs"] + (f" window={r['window']}" if len(windows) > 1 else "")
    out.setdefault(key, []).append(summarize(r, storage_dtype))
  return out


def write_groups(groups: dict, out: str, max_n: int, title: str, plot: bool) -> list[str]:
  """Print each group's table (:func:`by_run`) and, with ``plot``, draw its onsets figure as
  attribution_<group>.png in ``out`` (the group '': attribution.png, no heading). Returns the
  file names written."""
  from collapse_jax.figures import attribution as figures
  files = []
  for key, rows in groups.items():
    if key:
      print(f"-- {key}")
    print("\n".join(table(rows)))
    if plot:
      safe = "".join(c if c.isalnum() else "_" for c in key)
      name = f"attribution_{safe}.png" if key else "attribution.png"
      figures.onsets_figure(rows, f"{out}/{name}", max_n, f"{title}: {key}" if key else title)
      files.append(name)
  return files
