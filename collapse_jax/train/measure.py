"""What a trained model does: accuracy by length, gradient norms, its collapse on Cor. B.10's
pairs and the corollary's consequence (words: collapse_jax/train).

The collapse runs through the sweep engine (``sweep.run_grid``, on the length-invariant
schedule); the answers it is judged against are asked as :func:`evaluate` asks them (each
sequence alone in its row, left-padded to ``data.eval_width``), so the check compares two
measurements made apart and can fail.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from collapse_jax import jobs
from collapse_jax import memory
from collapse_jax import model as model_lib
from collapse_jax import precision
from collapse_jax.config import DecoderConfig
from collapse_jax.train import data
from collapse_jax.train import state as state_lib
from collapse_jax.train.data import COUNT0
from collapse_jax.train.state import TrainPrecision


def evaluate(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *, samples: int,
             seed: int, l_train: int) -> list[dict]:
  """Accuracy at each length n in ``ns`` on ``samples`` fresh sequences of exactly n digits
  (``data.length_batch``, the ACCURACY stream; one compile per width). count_ones also
  reports the accuracy on the answerable rows (count <= l_train, the largest trained count)
  and the mean absolute error of the predicted counts."""
  rows = []
  for n in ns:
    b = data.length_batch(task, seed, data.ACCURACY, n, samples)
    pred_B = state_lib.predict(cfg, tp, params, b)
    ok_B = pred_B == b.answer
    row = {"n": int(n), "accuracy": float(ok_B.mean()), "samples": int(samples)}
    if task == "count_ones":
      ans_B = b.count <= l_train
      row["answerable"] = int(ans_B.sum())
      row["accuracy_answerable"] = float(ok_B[ans_B].mean()) if ans_B.any() else None
      row["mean_abs_error"] = float(np.abs((pred_B - COUNT0) - b.count).mean())
    rows.append(row)
  return rows


@functools.lru_cache(maxsize=None)
def _grad_norm_fn(cfg: DecoderConfig, tp: TrainPrecision):
  def gn(p, batch):
    g = jax.grad(lambda q: state_lib.loss_fn(cfg, tp, q, batch)[0])(p)
    return optax.tree.norm(state_lib.floats_to(g, jnp.float32))
  return jax.jit(gn)


def grad_norm_by_length(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *,
                        samples: int, seed: int) -> list[dict]:
  """The global gradient norm (f32, before clipping) of the loss on ``samples`` sequences of
  exactly n digits (the GRAD_NORM stream), for each n: what the optimizer would be told at
  each length. count_ones rows need n <= the largest count token."""
  return [{"n": int(n), "grad_norm": float(_grad_norm_fn(cfg, tp)(
      params, data.length_batch(task, seed, data.GRAD_NORM, n, samples)))} for n in ns]


def first_below(rows: Sequence[dict], key: str, threshold: float) -> int | None:
  """The first n whose ``key`` is below ``threshold`` (None: never)."""
  for r in rows:
    if r.get(key) is not None and r[key] < threshold:
      return r["n"]
  return None


def b10_pairs(max_count: int, vocab: int):
  """Cor. B.10's pairs as a sweep pair set: prefixes of [BOS, ONE, ONE, ...]. The set's n
  counts tokens, BOS included: A_n holds n-1 ones and B_n n ones, so a collapse at n means
  counts c = n-1 and c+1 get one answer."""
  from collapse_jax import pairs
  return pairs.make_family("prefix_repeat", max_count + 1, seed=0, vocab_size=vocab,
                           token=data.ONE, prefix_ids=[data.BOS])


@functools.lru_cache(maxsize=None)
def _logits_fn(cfg: DecoderConfig, pol: precision.Policy):
  return jax.jit(lambda p, t: model_lib.forward(cfg, pol, p, t, collect=("logits",))["logits"])


def collapse(cfg: DecoderConfig, params, policies: Sequence[precision.Policy], max_count: int, *,
             task: str = "count_ones", memory_budget_gib: float = 2.0, log=jobs.say) -> dict:
  """The trained model's collapse on the Cor. B.10 pairs, counts 1..max_count, through the
  sweep engine (one causal pass per policy), its answers to the all-ones sequences, and the
  corollary's consequence checked against answers asked another way. ``params``: the master
  weights (upcast to f32, exactly; each policy casts them itself).

  Returns {policy name: {'counts' [C], 'linf' [C] (|y_c - y_(c+1)|_inf), 'equal' [C]
  (bitwise), 'collapse_onset' (first c with y_c == y_(c+1), -1: none), 'sustained_onset',
  'nonfinite_total', 'predicted' [max_count + 2] (the answer token's count for
  c = 0..max_count + 1 ones from one causal pass of the policy, -1 when the argmax is not a
  count token), 'same_answer' [C] (that pass gives c and c + 1 one answer token),
  'corollary'}}.

  'corollary' (:func:`b10_consequence`; None for the copy tasks, whose pairs [BOS, 1^c] and
  [BOS, 1^(c+1)] have the same correct answer, so the corollary predicts nothing): for every
  count in a run of bitwise-equal pairs, the model's answer as :func:`evaluate` asks it
  (:func:`answer_counts`), not the row of the pass that measured the equality (equal rows
  have one argmax, so that check could not fail)."""
  from collapse_jax import sweep
  data.check_task(task)
  params32 = state_lib.floats_to(params, jnp.float32)
  ns = np.arange(2, max_count + 2)
  recs = sweep.run_grid([sweep.Model(cfg, [params32])], list(policies),
                        {"b10": [b10_pairs(max_count, cfg.vocab_size)]}, ns, [0],
                        memory_budget=memory_budget_gib * memory.GiB, log=log)
  ones_1T = data.ones_sequence(max_count + 1)[None]
  counts_C = ns - 1
  shift = lambda o: int(o) - 1 if o >= 0 else -1
  out = {}
  for pol, rec in zip(policies, recs):
    logits_TV = _logits_fn(cfg, pol)(pol.cast_params(params32), jnp.asarray(ones_1T))[0]
    tok_T = np.asarray(jnp.argmax(logits_TV.astype(jnp.float32), axis=-1))
    eq_C = np.asarray(rec["bitwise_equal"], bool)
    cor = None
    if task == "count_ones":
      asked = sorted({int(c) + k for c in counts_C[eq_C] for k in (0, 1)})
      answers = answer_counts(cfg, pol, params32, asked, memory_budget_gib=memory_budget_gib)
      cor = b10_consequence(eq_C, counts_C, answers, cfg.vocab_size - 1 - COUNT0)
    out[pol.name] = {"counts": counts_C, "linf": rec["linf"], "equal": eq_C,
                     "collapse_onset": shift(rec["collapse_onset"]),
                     "sustained_onset": shift(rec["sustained_onset"]),
                     "nonfinite_total": rec["nonfinite_total"],
                     "predicted": np.where(tok_T >= COUNT0, tok_T - COUNT0, -1),
                     "same_answer": tok_T[1:-1] == tok_T[2:], "corollary": cor}
  return out


def b10_consequence(equal_C, counts_C, answers: dict, max_count_token: int) -> dict:
  """Cor. B.10 on count_ones, judged from two measurements made apart: ``equal_C`` [C]
  (y_c == y_(c+1) bit for bit, c = ``counts_C`` [C]; the sweep engine) and ``answers``
  ({count: the model's answer as a count, -1 for a non-count token}; :func:`answer_counts`)
  for every count in an equal pair. ``max_count_token``: the largest count with an answer
  token (a larger count is wrong whatever the model says).

  Consecutive equal pairs chain: y_c == y_(c+1) == ... == y_(c+k) is one representation for
  k + 1 counts, and the correct answers c, ..., c + k all differ. If the answer is a function
  of y_n alone (the corollary's premise), they get one answer, so at most ONE of them is right
  and at least k are wrong. What is verified, per such class of counts: at most one of its
  counts is answered right ('violations' lists the classes with two or more). It fails when
  the representation the sweep found equal is not what decides the model's answer as asked
  (e.g. the engine's bits are not the exact-shape forward's) or the answer depends on more
  than y_n. It cannot fail on a class where at most one count is answerable (all counts but
  one above ``max_count_token``): 'classes_that_could_fail' counts the others.
  'answer_differs_at_equal': equal pairs whose two answers differ, and 'premise_holds' (it is
  0): the premise's direct test, that the sweep's equal y is what decides the answer as
  asked. It can fail wherever pairs are equal, answerable or not; the corollary's claim
  ('holds') allows it when both answers are wrong, so it is a separate verdict.

  Returns {'equal_pairs', 'classes' [[first, last] count], 'forced_wrong' (sum of k: the
  fewest wrong answers the corollary allows), 'wrong' (measured, over the classes' counts),
  'violations', 'classes_that_could_fail', 'answer_differs_at_equal', 'premise_holds',
  'holds'}."""
  eq = np.asarray(equal_C, bool)
  counts = np.asarray(counts_C, np.int64)
  classes, j = [], 0
  while j < len(eq):
    if not eq[j]:
      j += 1
      continue
    k = j
    while k + 1 < len(eq) and eq[k + 1] and counts[k + 1] == counts[k] + 1:
      k += 1
    classes.append((int(counts[j]), int(counts[k]) + 1))  # counts c_j .. c_k + 1
    j = k + 1
  missing = sorted({c for a, b in classes for c in range(a, b + 1)} - set(answers))
  if missing:
    raise ValueError(f"b10_consequence: no answer for counts {missing[:5]}")
  right = lambda c: int(answers[c]) == c
  violations, could, wrong = [], 0, 0
  for a, b in classes:
    members = range(a, b + 1)
    wrong += sum(not right(c) for c in members)
    if sum(right(c) for c in members) >= 2:
      violations.append([a, b])
    could += sum(c <= max_count_token for c in members) >= 2
  differs = int(sum(int(answers[int(c)]) != int(answers[int(c) + 1]) for c in counts[eq]))
  return {"equal_pairs": int(eq.sum()), "classes": [list(c) for c in classes],
          "forced_wrong": int(sum(b - a for a, b in classes)), "wrong": int(wrong),
          "violations": violations, "classes_that_could_fail": int(could),
          "answer_differs_at_equal": differs, "premise_holds": differs == 0,
          "holds": not violations}


def answer_counts(cfg: DecoderConfig, pol: precision.Policy, params, counts, *,
                  memory_budget_gib: float = 2.0) -> dict:
  """The model's answer to [BOS, 1^c] for each c in ``counts``, asked as :func:`evaluate`
  asks it: the sequence alone in its row, left-padded to ``data.eval_width(c)`` (pads are
  invalid keys), the argmax of the last row's logits under ``pol`` (params: f32 master
  weights). Rows of one width W run together, as many as fit ``memory_budget_gib`` (scores
  [H, W, W], 4 bytes, 16 live copies per row). Returns {c: answered count (-1: a non-count
  token)}."""
  p = pol.cast_params(params)
  by_width: dict = {}
  for c in sorted(set(int(c) for c in counts)):
    by_width.setdefault(data.eval_width(c), []).append(c)
  out = {}
  for W, cs in by_width.items():
    rows = max(1, int(memory_budget_gib * 2**30 // (16 * 4 * cfg.num_heads * W * W)))
    for a in range(0, len(cs), rows):
      chunk = cs[a:a + rows]
      seqs = [data.ones_sequence(c) for c in chunk]
      seqs += [seqs[-1]] * (rows - len(chunk)) if len(cs) > rows else []  # one shape per W
      tok_B = state_lib.answers(cfg, pol, p, *data.pad_left(seqs, W))
      for c, k in zip(chunk, tok_B):
        out[c] = int(k) - COUNT0 if k >= COUNT0 else -1
  return out


def measure(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *, l_train: int,
            seed: int, eval_samples: int, grad_samples: int, onset_policies, max_count: int,
            memory_budget_gib: float = 2.0) -> dict:
  """A trained model's record: {'precision' (its description), 'accuracy' at every n of ``ns``
  (:func:`evaluate`), 'grad_norm_by_length' there, 'collapse' on Cor. B.10's pairs under
  each onset policy (:func:`collapse`), 'first_n_below_half' (accuracy below 0.5)}."""
  acc = evaluate(cfg, tp, params, task, ns, samples=eval_samples, seed=seed, l_train=l_train)
  return {"precision": tp.describe(), "accuracy": acc,
          "grad_norm_by_length": grad_norm_by_length(cfg, tp, params, task, ns,
                                                     samples=grad_samples, seed=seed),
          "collapse": collapse(cfg, params, onset_policies, max_count, task=task,
                               memory_budget_gib=memory_budget_gib, log=lambda *_: None),
          "first_n_below_half": first_below(acc, "accuracy", .5)}


def summary(name: str, record: dict, l_train: int) -> list[str]:
  """Console lines for one trained model's :func:`measure` record (plus 'train_s')."""
  inside = [r["accuracy"] for r in record["accuracy"] if r["n"] <= l_train]
  lines = [f"[{name}] trained in {record['train_s']:.0f}s; accuracy at n <= {l_train}: "
           + (f"{min(inside):.3f} (min)" if inside else "not evaluated")
           + f"; first n below 0.5: {record['first_n_below_half']}; collapse onset (c vs c+1 "
           "bitwise equal): " + ", ".join(f"{k} {v['collapse_onset']}"
                                          for k, v in record["collapse"].items())]
  for k, v in record["collapse"].items():
    c = v["corollary"]
    if c and c["equal_pairs"]:
      lines.append(
          f"  Cor. B.10 under {k}: {'holds' if c['holds'] else 'VIOLATED'}: "
          f"{c['equal_pairs']} equal pairs in {len(c['classes'])} runs of counts, "
          f"{c['wrong']} wrong answers there (at least {c['forced_wrong']} forced); "
          f"{c['classes_that_could_fail']} runs with two answerable counts; answers "
          f"differ at {c['answer_differs_at_equal']} equal pairs (premise "
          f"{'holds' if c['premise_holds'] else 'BROKEN'})"
          + (f"; violations {c['violations']}" if c["violations"] else ""))
  return lines
