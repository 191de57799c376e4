"""Small synthetic inputs for every figure of the suite, shaped like the experiments' records.

No model runs here: the run records go through the library's own builders
(``records.summarize``/``records.compact``, ``harness.summarize``, ``diagnosis.octaves``,
``sweep.predicted_onset``, the float64 parts of ``theory.softmax`` and ``theory.spectral``),
fed with distances that decay like the real ones (~1/n) and, for a narrow precision, are
rounded to its ulp at |y| = 2.5, so that they floor at exactly 0 (bitwise equal) once below
half an ulp. Everything is seeded: a sample draws the same figure every time.

:data:`SAMPLES` maps a name (the PNG's stem) to a :class:`Sample`: its figure function and
``draw(path)``, which calls it (``path`` None: the open Figure, for ``figures.check``). The
gallery (experiments/gallery.py) and tests/test_figures_*.py draw these.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from collapse_jax import (attribution, diagnosis, harness, pairs, plotting, precision, prompts,
                          records, sweep)
from collapse_jax import tasks as tasks_lib
from collapse_jax.figures import real, tasks, theory, train
from collapse_jax.figures import attribution as attribution_figures
from collapse_jax.figures import sweep as sweep_figures
from collapse_jax.theory import counting as counting_lib
from collapse_jax.theory import softmax, spectral


@dataclasses.dataclass(frozen=True)
class Sample:
  name: str
  figure: Callable
  draw: Callable  # draw(path | None) -> path | Figure

  @property
  def module(self) -> str:
    return self.figure.__module__.rsplit(".", 1)[-1]


SAMPLES: dict[str, Sample] = {}


def names(module: str) -> list[str]:
  """The samples of figures module ``module`` ('sweep', 'theory', 'real', 'tasks', 'train',
  'attribution')."""
  return [n for n, s in SAMPLES.items() if s.module == module]


def undrawn(module) -> list[str]:
  """The public figure functions of ``module`` (a figures module) that no sample draws
  (``write_*`` functions write several of its figures and are tested on their own)."""
  drawn = {s.figure for s in SAMPLES.values()}
  return [k for k, v in vars(module).items() if callable(v) and not k.startswith(("_", "write_"))
          and getattr(v, "__module__", None) == module.__name__ and v not in drawn]


def _sample(name: str, figure: Callable):
  def register(draw):
    SAMPLES[name] = Sample(name, figure, draw)
    return draw
  return register


ABSMAX = 2.5  # |y| of the synthetic representations: sets each dtype's ulp


def rounded(d, dtype: str, absmax: float = ABSMAX) -> np.ndarray:
  """Distances ``d`` rounded to ``dtype``'s ulp at |y| = ``absmax`` (float64: unchanged)."""
  if dtype == "float64":
    return np.asarray(d, np.float64)
  ulp = 2 * plotting.half_ulp(np.full(np.shape(d), absmax), dtype)
  return np.round(np.asarray(d) / ulp) * ulp


def distance(n, dtype: str, seed: int, scale: float = 0.8) -> np.ndarray:
  """A distance [S] over lengths ``n`` [S]: scale / n^1.05 with a seeded wobble, rounded to
  ``dtype``'s ulp at |y| = ABSMAX (:func:`rounded`)."""
  n = np.asarray(n, np.float64)
  rng = np.random.default_rng([seed, 7])
  return rounded(scale / n ** 1.05 * np.exp(0.2 * rng.standard_normal(n.size)), dtype)


def run_record(dtype: str, heads: int, seed: int, lengths, *, layers: int = 2,
               engine: str = "causal", nonfinite: bool = False) -> dict:
  """A sweep run record (``records.summarize`` of synthetic engine metrics) with its labels.
  ``nonfinite``: y and the layers from the middle on overflow at every n."""
  n = np.asarray(lengths)
  S = n.size
  ulp = lambda d: np.nan_to_num(np.round(d / (2 * plotting.half_ulp(np.full(S, ABSMAX), dtype))))
  y = distance(n, dtype, seed)
  hd = np.stack([distance(n, dtype, seed + 10 * h + 1, 1.5) for h in range(heads)])
  ld = np.stack([distance(n, dtype, seed + 100 * l + 3, 0.5 + 0.2 * l) for l in range(layers + 1)])
  bad_l = np.zeros((layers + 1, S), int)
  if nonfinite:
    y, bad_l[layers // 2:] = np.full(S, np.nan), 4
    ld[layers // 2:] = np.nan
  raw = {"y_linf": y, "y_l1": 20 * y, "y_max_ulp": ulp(y), "y_bitwise_equal": y == 0,
         "y_absmax": np.full(S, ABSMAX), "y_nonfinite": np.full(S, 64 if nonfinite else 0),
         "layer_linf": ld, "layer_l1": 20 * ld, "layer_max_ulp": ulp(ld),
         "layer_bitwise_equal": ld == 0, "layer_nonfinite": bad_l,
         "head_linf": hd, "head_bitwise_equal": hd == 0, "head_nonfinite": np.zeros_like(hd),
         "head_absmax": np.full(S, ABSMAX)}
  rec = records.summarize({k: np.asarray(v)[None] for k, v in raw.items()}, n, 0)
  return {"dtype": dtype, "heads": heads, "seed": seed, "engine": engine, **rec}


# -- figures/sweep.py ------------------------------------------------------------------------
@_sample("collapse", sweep_figures.collapse_plot)
def _collapse(path):
  n = pairs.parse_lengths("log:2:8192:40")
  runs = [run_record(d, h, s, n) for d in ("float32", "bfloat16", "float16") for h in (1, 4)
          for s in (0, 1)]
  ref = [run_record("float64", h, s, n) for h in (1, 4) for s in (0, 1)]
  return sweep_figures.collapse_plot(runs, path, "prefix_repeat, 2L d=64 rope, engine causal: "
                                     "final output y, seed mean", reference=ref)


@_sample("isa", sweep_figures.isa_heatmap)
def _isa(path):
  settings = ["reference", "native", "SSE4_2", "AVX2"]
  probes = ["dot_f32_256", "dot_f32_4096", "fma_f32", "div_const", "exp", "tanh", "logistic",
            "rsqrt", "sin", "cos", "log", "forward/bfloat16", "forward/float32"]
  rng = np.random.default_rng(0)
  frac = {p: {s: 0.0 if s in ("reference", "SSE4_2") or not p.startswith(("dot", "forward"))
              else float(rng.uniform(0.01, 0.6)) for s in settings} for p in probes}
  return sweep_figures.isa_heatmap(frac, settings, path, "bits vs the reference path (max ISA "
                                   "AVX) on AMD EPYC 7B13 (AVX2)")


@_sample("bf16_floor", sweep_figures.floor_figure)
def _floor(path):
  n = pairs.parse_lengths("log:17:8192:60")
  recs = [run_record(d, 1, 0, n) for d in ("float64", "bfloat16")]
  names = ["heads L0", "v^(1)", "heads L1", "v^(2)", "y"]
  stages = {d: {"n": [1000, 4000], "stages": names, "coords": [64] * 5,
                "coords_differ": np.array(c)} for d, c in (
      ("float64", [[64, 64]] * 5), ("bfloat16", [[9, 3], [5, 2], [4, 1], [3, 1], [2, 0]]))}
  eq = recs[1]["bitwise_equal"]
  p = np.clip((np.log2(n) - 5) / 8, 0, 1)
  octaves = {"bfloat16": diagnosis.octaves(n, measured=eq, attention=p ** 2, output=p)}
  return sweep_figures.floor_figure(stages, recs, path, "prefix_repeat, 2L d=64 H=1: where rows "
                                    "n-1 and n still differ; the distance over n; how often "
                                    "they are equal", octaves=octaves)


def _synthetic(pes):
  n = pairs.parse_lengths("log:2:2048:40")
  by_pe = {}
  for pe in pes:
    recs = [run_record(d, 1, s, n, layers=1) for d in ("float64", "float32", "bfloat16",
                                                        "float16", "float8_e4m3fn") for s in (0, 1)]
    ref = {r["seed"]: r["last_layer_heads"] for r in recs if r["dtype"] == "float64"}
    for r in recs:  # as sweep.synthetic_collapse_grid adds them
      h, base = r["last_layer_heads"], ref[r["seed"]]
      dt = precision.get_policy(r["dtype"]).storage_dtype
      r.update(pe=pe, attn_linf=h["linf_max"], attn_equal=h["all_heads_equal"],
               attn_onset=h["collapse_onset"], attn_sustained_onset=h["sustained_onset"],
               predicted_onset=sweep.predicted_onset(n, base["linf_max"], base["absmax"], dt))
    by_pe[pe] = recs
  return by_pe


@_sample("synthetic_collapse", sweep_figures.synthetic_figure)
def _fig8(path):
  return sweep_figures.synthetic_figure(_synthetic(["sinusoidal"]), path, "Fig 8: 1 attention "
                                        "layer, d=64, weights N(0, 0.0156), last token copied "
                                        "(vector); float64 = ground truth")


@_sample("synthetic_collapse_fig10", sweep_figures.synthetic_figure)
def _fig10(path):
  return sweep_figures.synthetic_figure(
      _synthetic(["rope", "alibi", "learned", "sinusoidal", "none"]), path,
      "Fig 10: 1 attention layer, d=64, weights N(0, 1), last token copied (vector); float64 = "
      "ground truth")


# -- figures/theory.py -----------------------------------------------------------------------
PRECISIONS = ("float32", "bfloat16", "float16", "float8_e4m3fn")


def _stored(rows, name):
  """Float64 softmax rows rounded once to the preset's storage dtype (numpy; no jax run)."""
  dt = precision.get_policy(name).storage_dtype
  return [softmax.softmax_np(r).astype(dt).astype(np.float64) for r in rows]


@_sample("softmax_lemmas", theory.softmax_lemmas_figure)
def _softmax(path):
  b2 = softmax.lemma_b2_sweep(softmax.log_lengths(10, 10_000, 13), (0, 1, 2))
  b4 = softmax.lemma_b4_sweep(softmax.log_lengths(10, 10_000, 13, even=True))
  b1 = softmax.lemma_b1_sweep(softmax.log_lengths(2, 10_000, 13))
  x2 = [softmax.lemma_b2_pair(int(n), s, b2["k"], b2["noise"]) for n in b2["n"] for s in (0, 1, 2)]
  x4 = [softmax.lemma_b4_pair(int(n)) for n in b4["n"]]
  a = np.random.default_rng(0).uniform(0.0, 1.0, max(b1["n"]) - 1)
  x1 = [(np.append(a[:n - 1], 1.0), np.append(a[:n - 1], [1.0, 1.0])) for n in b1["n"]]
  for p in PRECISIONS:
    tv = softmax.pair_tv(_stored([x for x, _ in x2], p), _stored([x for _, x in x2], p))
    b2["tv_by_precision"][p] = tv.reshape(len(b2["n"]), 3)
    b2["first_zero_by_precision"][p] = softmax.first_zero(b2["n"], b2["tv_by_precision"][p])
    b4["tv_by_precision"][p] = softmax.pair_tv(_stored([x for x, _ in x4], p),
                                               _stored([x for _, x in x4], p))
    b1["gap_by_precision"][p] = np.array([u[-1] - v[-1] for u, v in zip(
        _stored([x for x, _ in x1], p), _stored([x for _, x in x1], p))])
  return theory.softmax_lemmas_figure(b1, b2, b4, path)


@_sample("oversquashing", theory.oversquashing_figure)
def _oversquashing(path):
  i = np.arange(64, dtype=np.float64)
  u = 1 + 40 * np.exp(-i / 3) + 8 * np.exp((i - 63) / 2)  # the U-shape: first and last tokens
  sens = {"bound": {"bound": 30 * u, "bound_tight": 6 * u}, "frozen": {"spectral": 0.6 * u},
          "full": {"spectral": 0.7 * u * (1 + 0.1 * np.sin(i))}}
  curves = spectral.convergence_curves([8, 64], range(0, 121), tol=1e-3,
                                       extra={"model_layer0_n64": spectral.random_causal(64, 1)})
  return theory.oversquashing_figure(sens, curves, spectral.convergence_depths(64, tol=1e-3),
                                     path, title="Thm 5.1: n=64, L=2, D=32, rope, float64",
                                     tol=1e-3)


@_sample("counting", theory.counting_figure)
def _counting(path):
  b9 = {}
  for mask in ("bidirectional", "causal"):
    for p, scale in (("bfloat16", 4e-3), ("float32", 2e-7)):
      b9[f"{mask}/{p}"] = [
          {"multiplier": m, "arrangement": arr, "sequence": counting_lib.expand("10", m, arr),
           "depth": ["v0", "v1", "v2", "y"],
           "max_rel_diff": [0.0, 0.0, 0.0, 0.0] if mask == "bidirectional" and m in (2, 4)
           else [0.0, 0.0 if mask == "causal" else scale, 3 * scale * m, 2 * scale * m]}
          for m in (2, 3, 4) for arr in ("blocks", "tiled")]
  n = np.arange(1, 512)
  b10 = {}
  for p in ("bfloat16", "float16"):
    d = distance(n, p, 3, 0.05)
    first = int(n[d == 0][0]) if np.any(d == 0) else -1
    b10[p] = {"lengths": n, "linf": d, "equal": d == 0, "reference": "float64",
              "reference_linf": distance(n, "float64", 3, 0.05),
              "wrong_count": {"n": first, "counts": [first - 1, first]} if first > 0 else None}
  return theory.counting_figure(b9, b10, path, base="10")


# -- figures/real.py -------------------------------------------------------------------------
CAPTION_REAL = ("SmolLM2-135M-Instruct (Q8_0 GGUF) (-> f32 -> policy), the chat template, "
                "compared token = last digit of A_n / B_n; n = digit tokens of A_n (every digit "
                "is one token); engines: (a) causal, (b) kv_cache, (c) causal, (d) exact; (b) "
                "seeds 0,1")


def settings(keys=prompts.SETTINGS) -> dict:
  """Figure 5's settings as PairSets with stand-in token ids (titles and pairs as in
  ``prompts.make_setting``; no tokenizer)."""
  spec = prompts._SPEC  # noqa: SLF001  (the settings' texts; make_setting needs a tokenizer)
  return {k: prompts.PromptSetting(
      key=k, title=spec[k]["title"], pair=spec[k]["pair"], question=spec[k]["question"],
      prefix_ids=(1,) * 30, suffix_ids=(2,) * 6, one_id=33, comma_id=28,
      digit_ids=tuple(range(32, 42)), random_digits=spec[k]["random_digits"],
      commas=spec[k]["commas"], seed=0) for k in keys}


def real_runs(dtypes=("float32", "bfloat16", "float16"), keys=prompts.SETTINGS, *,
              lengths="log:1:300:40", windows=("native",), layers=30, nonfinite=()):
  """Compact records (``records.compact``) of a real-model run: per window, setting, dtype
  and seed ((b): seeds 0 and 1); ``nonfinite``: dtypes whose y overflows at every n."""
  n = pairs.parse_lengths(lengths)
  engines = {"a": "causal", "b": "kv_cache", "c": "causal", "d": "exact"}
  return [records.compact({"window": w, **run_record(d, 9, s + 17 * i, n, layers=layers,
                                                     engine=engines[k], nonfinite=d in nonfinite),
                           "pairs": k, "seed": s, "position": "digit"})
          for i, w in enumerate(windows) for k in keys for d in dtypes
          for s in ((0, 1) if k == "b" else (0,))]


@_sample("real_model_collapse", real.figure5)
def _figure5(path):
  return real.figure5(real_runs(), settings(), path, CAPTION_REAL)


@_sample("real_model_collapse_layers", real.layers_figure)
def _layers(path):
  return real.layers_figure(real_runs(), settings(), path, CAPTION_REAL)


@_sample("real_model_collapse_windows", real.windows_figure)
def _windows(path):
  windows = ["native", "global", "512"]
  runs = real_runs(("float32", "bfloat16", "float16"), ("a", "c"), lengths="log:1:1200:40",
                   windows=windows, layers=18, nonfinite=("float16",))
  return real.windows_figure(runs, settings(("a", "c")), windows, [512], path,
                             CAPTION_REAL.replace("SmolLM2-135M-Instruct", "Gemma 3 270M")
                             + "; windows native,global,512")


# -- figures/tasks.py ------------------------------------------------------------------------
CAPTION_TASKS = ("SmolLM2-135M-Instruct (Q8_0 GGUF); chat template; greedy, max default new "
                 "tokens; n = sequence length (digits / ones / words); prompts from Appendix "
                 "C.1 (collapse_jax/tasks.py)")


def task_samples(names=("copy_last", "copy_first", "count_ones"), modes=("direct",),
                 ns=(5, 40), dtypes=("float32", "bfloat16"), samples: int = 1,
                 seed: int = 0) -> list[dict]:
  """Sample rows as ``harness.evaluate`` writes them (the fields the summary and the figures
  read): a small model, right mostly at short n, its counts off by a few (``seed``: another
  such model)."""
  rng = np.random.default_rng(seed)
  rows = []
  for task in names:
    for mode in modes:
      for d in dtypes:
        for n in ns:
          for s in range(samples):
            seq, answer = tasks_lib.sequence(task, n, s)
            right = rng.uniform() < 0.9 / (1 + n / 10)
            got = answer if right else (1 - answer if task.startswith("copy") else
                                        max(0, answer + int(rng.integers(-3, 6))))
            rows.append({"task": task, "mode": mode, "n": n, "dtype": d, "sample": s,
                         "answer": answer, "flexible": got, "strict": got if s % 2 else None,
                         "correct_flexible": got == answer,
                         "correct_strict": got == answer and bool(s % 2),
                         "margin": float(rng.normal(1.0 if right else -1.5, 0.5))})
  return rows


@_sample("tasks_accuracy", tasks.tasks_figure)
def _tasks(path):  # python -m experiments.tasks --task=copy_last,copy_first --lengths=5,40
  summary = harness.summarize(task_samples(("copy_last", "copy_first"), ns=(5, 40)))
  return tasks.tasks_figure(summary, path, CAPTION_TASKS)


@_sample("tasks_accuracy_modes", tasks.tasks_figure)
def _tasks_modes(path):
  rows = task_samples(("count_ones", "count_bernoulli"), tasks_lib.MODES,
                      tuple(pairs.parse_lengths("log:2:200:8")), samples=5)
  return tasks.tasks_figure(harness.summarize(rows), path, CAPTION_TASKS)


@_sample("tasks_octaves", tasks.octaves_figure)
def _octaves(path):  # --task=copy_last,copy_first --lengths=2:63 --nobridge
  rows = task_samples(("copy_last", "copy_first"), ns=tuple(range(2, 64)))
  return tasks.octaves_figure(harness.summarize_octaves(rows), path, CAPTION_TASKS)


@_sample("tasks_models", tasks.models_figure)
def _models(path):  # a Gemma 3 run with --beside=<a SmolLM2 run's --out>
  copy = lambda seed: harness.summarize(task_samples(("copy_last", "copy_first"),
                                                     ns=(5, 40, 300), seed=seed))  # per n
  runs = [("SmolLM2-135M-Instruct (the chat template)", copy(0)),
          ("Gemma 3 270M (plain text)", copy(1))]
  return tasks.models_figure(runs, path, CAPTION_MODELS)


CAPTION_MODELS = ("greedy; n = sequence length (digits); prompts from Appendix C.1 "
                  "(collapse_jax/tasks.py), each model's own format")


@_sample("tasks_models_octaves", tasks.models_figure)
def _models_octaves(path):  # the same on a dense grid (--lengths=16:511:8), pooled per octave
  copy = lambda seed: harness.summarize_octaves(task_samples(
      ("copy_last", "copy_first"), ns=tuple(range(16, 512, 8)), dtypes=("float32",), seed=seed))
  runs = [("SmolLM2-135M-Instruct (the chat template)", copy(0)),
          ("Gemma 3 270M (plain text)", copy(1))]
  return tasks.models_figure(runs, path, CAPTION_MODELS)


@_sample("tasks_counts", tasks.counts_figure)
def _counts(path):
  rows = task_samples(("count_ones", "count_bernoulli"), ns=(2, 5, 10, 20, 40), samples=3)
  return tasks.counts_figure(rows, path, CAPTION_TASKS)


@_sample("tasks_bridge", tasks.bridge_figure)
def _bridge(path):  # distances as SmolLM2's (|y| ~ 40): 3 at n = 5 down to 0.6 at n = 40
  rows = []
  for task in tasks_lib.BRIDGE_TASKS:
    for d in ("float32", "bfloat16"):
      ns = np.array([2, 5, 10, 20, 40])
      dist = rounded(3.0 * (5 / ns) ** 0.8, "float64" if d == "float32" else d, 40.0)
      for n, y in zip(ns, dist):
        rows.append({"task": task, "dtype": d, "n": int(n),
                     "pair": tasks_lib.bridge_sequences(task, int(n)), "y_linf": float(y),
                     "y_equal": bool(y == 0), "output_equal": bool(n >= 10),
                     "margin_equal": bool(d == "bfloat16" and n == 40)})
  return tasks.bridge_figure(rows, path, CAPTION_TASKS)


# -- figures/attribution.py ------------------------------------------------------------------
@_sample("attribution", attribution_figures.onsets_figure)
def _attribution(path):
  n = pairs.parse_lengths("17:4096:8")
  points = ["embed", "norm", "qkv", "rope", "scores", "probs", "heads", "residual", "mlp_act"]
  kinds = (["all", "none"] + [f"drop:{p}" for p in points] + [f"only:{p}" for p in points]
           + ["drop:@attention", "only:@attention"])
  rows = []
  for i, kind in enumerate(kinds):  # 'none' and the only: variants floor in float32
    dtype = "float32" if kind == "none" or kind.startswith("only:") and i % 3 else "bfloat16"
    rec = {**run_record(dtype, 1, i, n), "dtype": f"bfloat16:{kind}"}
    rows.append(attribution.summarize(rec, precision.get_policy("bfloat16").storage_dtype))
  return attribution_figures.onsets_figure(rows, path, int(n[-1]), "bfloat16: prefix_repeat, "
                                           "2L d=64 H=1 rope (synthetic sample)")


@_sample("rope_shift", attribution_figures.rope_shift_figure)
def _rope_shift(path):
  rng = np.random.default_rng(5)
  cells = []
  for name, level, growth in (("float32", 5e-6, 1.0), ("float32+f64_angles", 2.3e-6, 0.0),
                              ("bfloat16", 0.045, 0.0), ("bfloat16+f64_angles", 0.045, 0.0)):
    for N in (128, 256, 512, 1024):
      rows = [{"shift": d, "D": list(level * (1 + growth * d / 200) * rng.uniform(0.9, 1.1, 3)),
               "first_share": list(2.0 / (N + 1) * rng.uniform(0.8, 1.2, 3))}
              for d in (16, 2000)]
      cells.append({"policy": name, "N": N, "rows": rows})
  return attribution_figures.rope_shift_figure(cells, path, "synthetic 2L d=64 H=4 rope: RoPE "
                                               "logits at positions p + Δ vs p (sample)")


# -- figures/train.py ------------------------------------------------------------------------
@_sample("train", train.train_figure)
def _train(path):
  rng = np.random.default_rng(0)
  ns, counts = [1, 2, 4, 8, 16, 24, 32, 48, 64], np.arange(1, 65)
  runs = {}
  for i, name in enumerate(("float32", "bfloat16", "bfloat16_weights")):
    acc = [{"n": n, "accuracy": float(np.clip(1.1 - n / 40 - 0.1 * i, 0, 1)),
            "accuracy_answerable": None if n > 16 else float(np.clip(1 - 0.05 * i, 0, 1))}
           for n in ns]
    collapse = {}
    for pol in ("float32", "bfloat16"):
      d = distance(counts, pol, 11 + i, 0.2)
      eq = d == 0
      collapse[pol] = {"counts": counts, "linf": d, "equal": eq,
                       "collapse_onset": int(counts[eq][0]) if eq.any() else -1}
    steps = np.arange(0, 2000, 10)
    runs[name] = {"accuracy": acc, "collapse": collapse, "history": {
        "steps": steps, "loss": 2.5 * np.exp(-steps / 400) + 0.05 + 0.02 * rng.uniform(size=200),
        "grad_norm": 1 + 3 * np.exp(-steps / 300) + 0.3 * rng.uniform(size=200)}}
  return train.train_figure(runs, 16, path, "count_ones, trained on n <= 16; 2 layers, d=64, 4 "
                            "heads, rope; 2000 steps x 64; seed 0; onsets on Cor. B.10's pairs, "
                            "counts <= 64")
