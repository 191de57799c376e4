"""Answer log-probabilities: teacher-forced continuations scored against one prefilled prompt
(:mod:`collapse_jax.tasks`' preferences), under any precision policy.

Words as in :mod:`collapse_jax.generate`. A prompt is run once (:func:`context`: the
generation prefill, batch 1) and every continuation is scored against its cache in batched
passes of :data:`SCORE_ROWS` rows. Bits: the prompt and the continuation rows run under
``generate.fast_policy`` (off the length-invariant schedule, the backend's dot order), so
their low bits may differ from fresh forwards (tests/test_scoring.py states the tolerance).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import model as model_lib
from collapse_jax.config import DecoderConfig
from collapse_jax.generate import PREFILL_CHUNK, blocked_weights, fast_policy, prefill
from collapse_jax.precision import Policy


SCORE_ROWS = 16  # continuations scored per batched pass (one compile per (P, T))


@dataclasses.dataclass
class Context:
  """A prefilled prompt (batch 1) that many continuations are scored against:
  ``cache`` (P slots), ``logits`` [V] of its last row as stored, ``length`` its tokens."""
  cache: dict
  logits: jax.Array
  length: int


def context(cfg: DecoderConfig, policy: Policy, params, prompt: Sequence[int], *,
            query_chunk: int | None = PREFILL_CHUNK) -> Context:
  """Run ``prompt`` once (``generate.prefill``) for :func:`score`."""
  cache, _, logits, lengths, _, _ = prefill(cfg, policy, params, [prompt], 0,
                                         query_chunk=query_chunk)
  return Context(cache, logits[0], int(lengths[0]))


@functools.lru_cache(maxsize=32)
def _score_fn(cfg: DecoderConfig, pol: Policy):

  @jax.jit
  def score(params, blocked, cache, first_logits_V, conts_CT, len_C, pos0, next_ids_M):
    C, T = conts_CT.shape
    c = {"k": jnp.broadcast_to(cache["k"], cache["k"].shape[:1] + (C,) + cache["k"].shape[2:]),
         "v": jnp.broadcast_to(cache["v"], cache["v"].shape[:1] + (C,) + cache["v"].shape[2:]),
         "pos": jnp.broadcast_to(cache["pos"], (C,) + cache["pos"].shape[1:]),
         "valid": jnp.broadcast_to(cache["valid"], (C,) + cache["valid"].shape[1:])}
    pos = jnp.broadcast_to(pos0 + jnp.arange(T, dtype=jnp.int32), (C, T))
    valid = jnp.arange(T)[None, :] < len_C[:, None]
    out = model_lib.forward(cfg, pol, params, conts_CT, positions=pos,
                            key_valid=valid, cache=c, collect=("logits",), blocked=blocked)
    # the distribution before each continuation token: the prompt's, then each row's own
    first = jnp.broadcast_to(first_logits_V, (C, 1, first_logits_V.shape[-1]))
    lp = jax.nn.log_softmax(jnp.concatenate([first, out["logits"]], 1).astype(jnp.float32), -1)
    tok = jnp.take_along_axis(lp[:, :T], conts_CT[..., None], -1)[..., 0]
    tok = jnp.where(valid, tok, 0.0).sum(-1)                              # [C]
    after = jnp.take_along_axis(lp, len_C[:, None, None], 1)[:, 0]        # [C, V]
    nxt = after[:, next_ids_M]                                             # [C, M]
    rest = jax.nn.logsumexp(after.at[:, next_ids_M].set(-jnp.inf), -1)     # [C]
    return tok, nxt, rest

  return score


def score(cfg: DecoderConfig, policy: Policy, params, ctx: Context,
          continuations: Sequence[Sequence[int]], next_ids: Sequence[int], *,
          pad_to: int | None = None):
  """Teacher-forced log-probabilities of ``continuations`` (token lists; empty allowed)
  after a prefilled prompt, in batched passes over its cache (:data:`SCORE_ROWS` at a time).

  Returns float64 arrays: ``tokens`` [C] = sum_t log p(c_t | prompt, c_<t); ``next`` [C, M] =
  log p(next_ids[m] | prompt, c); ``rest`` [C] = log p(next token not in next_ids | prompt,
  c), summed in float32 over the other ids (no 1 - p cancellation). Log-softmax is taken in
  float32 on the logits as the policy stores them. ``pad_to``: pad to this many tokens (one
  compile for every call with the same bucket)."""
  if len(continuations) == 0:
    raise ValueError("score needs at least one continuation")
  T = max(pad_to or 1, max(len(c) for c in continuations), 1)
  conts = np.zeros((len(continuations), T), np.int32)
  for i, c in enumerate(continuations):
    cfg.check_token_ids(c, "continuation tokens")
    conts[i, :len(c)] = c
  lens = np.asarray([len(c) for c in continuations], np.int32)
  fast = fast_policy(policy)
  fn, ids = _score_fn(cfg, fast), jnp.asarray(list(next_ids), jnp.int32)
  blocked = blocked_weights(cfg, fast, params)
  parts = []
  for a in range(0, len(conts), SCORE_ROWS):
    rows = np.arange(a, a + SCORE_ROWS) % len(conts)  # a short last chunk repeats rows
    parts.append(fn(params, blocked, ctx.cache, ctx.logits, conts[rows], lens[rows],
                    jnp.int32(ctx.length), ids))
  cat = lambda j: np.concatenate([np.asarray(p[j], np.float64) for p in parts])[:len(conts)]
  return cat(0), cat(1), cat(2)
