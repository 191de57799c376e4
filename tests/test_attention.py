"""Attention as one pure function (collapse_jax/attention.py): ``attend`` on every schedule
against a float64 numpy softmax attention, and the schedule's one-line errors. The
length-invariance of the tiled schedule through the whole decoder is tested in
tests/test_model.py (rows of a pass vs exact-length forwards)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import attention, model, precision

B, N, M, KV, G, DH = 2, 21, 29, 2, 2, 8  # 8 cached keys, then 21 new rows


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, N, KV, G, DH)).astype(np.float32)
  k = rng.standard_normal((B, M, KV, DH)).astype(np.float32)
  v = rng.standard_normal((B, M, KV, DH)).astype(np.float32)
  valid = np.ones((B, M), bool)
  valid[1, 3] = False  # one padded key
  pos = np.broadcast_to(np.arange(M, dtype=np.int32), (B, M))
  return q, k, v, pos, valid


def _reference(q, k, v, pos, valid, *, causal, window, scale, cap=lambda s: s):
  """float64: rows are the last N of the M keys' indices; heads [B, N, KV, G, Dh]; ``cap``
  maps the scores before the mask (softcapping)."""
  q, k, v = (x.astype(np.float64) for x in (q, k, v))
  s = cap(np.einsum("bnhgd,bmhd->bhgnm", q, k) * scale)
  i = np.arange(M - N, M)[:, None]
  j = np.arange(M)[None, :]
  mask = valid[:, None, None, None, :] & np.ones((1, 1, 1, N, M), bool)
  if causal:
    mask = mask & (j <= i)
  if window is not None:
    mask = mask & (np.abs(pos[:, None, None, M - N:, None] - pos[:, None, None, None, :])
                   < window)
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  return np.einsum("bhgnm,bmhd->bnhgd", p, v)


WHOLE = attention.Schedule()


@pytest.mark.parametrize("tiled,causal,window,sched", [
    *[(True, c, w, WHOLE) for c, w in ((True, None), (True, 5), (False, None))],
    (False, False, None, WHOLE),
    (False, True, 5, attention.Schedule(query_chunk=4)),
    (False, True, None, attention.Schedule(query_chunk=4, key_block=8)),
])
def test_attend_matches_a_float64_softmax_attention(tiled, causal, window, sched):
  """float32 on every schedule: tiles of 8 rows and key blocks of 8 (tiled; query_chunk and
  key_block are the untiled path's), or the whole pass, query chunks and key blocks
  (untiled); causal, a window of 5, bidirectional; to rtol 1e-5 of float64."""
  pol = precision.get_policy("float32")
  pol = dataclasses.replace(pol, row_tile=8, accum_block=8) if tiled else pol.untiled()
  q, k, v, pos, valid = _inputs()
  heads, probs = attention.attend(pol, *map(jnp.asarray, (q, k, v, pos, valid)),
                                  jnp.asarray(pos[:, M - N:]), causal=causal, window=window,
                                  alibi_heads=None, qk_scale=DH ** -0.5, schedule=sched)
  want = _reference(q, k, v, pos, valid, causal=causal, window=window, scale=DH ** -0.5)
  assert heads.shape == (B, N, KV, G, DH) and heads.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(heads, np.float64), want, rtol=1e-5, atol=1e-6)
  assert probs is None


def test_attention_weights_are_returned_when_asked_and_sum_to_one():
  q, k, v, pos, valid = _inputs(1)
  for pol in (dataclasses.replace(precision.get_policy("float32"), row_tile=8, accum_block=8),
              precision.get_policy("float32").untiled()):
    _, probs = attention.attend(pol, *map(jnp.asarray, (q, k, v, pos, valid)),
                                jnp.asarray(pos[:, M - N:]), causal=True, window=None,
                                alibi_heads=None, qk_scale=1.0,
                                schedule=attention.Schedule(want_probs=True))
    assert probs.shape == (B, KV * G, N, M)
    np.testing.assert_allclose(np.asarray(probs, np.float64).sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(probs)[1, :, :, 3] == 0.0)  # the padded key
    assert np.all(np.triu(np.asarray(probs)[0, 0, :, M - N:], 1) == 0.0)  # causal


@pytest.mark.parametrize("sched,n,msg", [
    (attention.Schedule(query_chunk=0), 4, "query_chunk must be >= 1"),
    (attention.Schedule(query_chunk=2, want_probs=True), 4, "needs the whole"),
    (attention.Schedule(key_block=0), 4, "key_block must be >= 1"),
    (attention.Schedule(query_mesh=model.chunk_mesh(jax.devices()[:1])), 4, "needs query_chunk"),
])
def test_schedule_refuses_what_it_cannot_run(sched, n, msg):
  with pytest.raises(ValueError, match=msg):
    sched.check(n)
  attention.Schedule(query_chunk=4, want_probs=True).check(4)  # the whole matrix: allowed


@pytest.mark.parametrize("tiled", [True, False])
def test_softcapped_scores_match_a_float64_reference(tiled):
  """Gemma 2's softcapping: scores cap tanh(s / cap) before the mask and softmax; a cap of
  0.7 bends every score, so attention without it is far off."""
  pol = precision.get_policy("float32")
  pol = dataclasses.replace(pol, row_tile=8, accum_block=8) if tiled else pol.untiled()
  q, k, v, pos, valid = _inputs(2)
  heads, _ = attention.attend(pol, *map(jnp.asarray, (q, k, v, pos, valid)),
                              jnp.asarray(pos[:, M - N:]), causal=True, window=5,
                              alibi_heads=None, qk_scale=1.0, softcap=0.7)
  capped = lambda s: 0.7 * np.tanh(s / 0.7)
  want = _reference(q, k, v, pos, valid, causal=True, window=5, scale=1.0, cap=capped)
  np.testing.assert_allclose(np.asarray(heads, np.float64), want, rtol=1e-5, atol=1e-6)
  plain = _reference(q, k, v, pos, valid, causal=True, window=5, scale=1.0)
  assert np.max(np.abs(plain - want)) > 0.05
