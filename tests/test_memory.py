"""Memory planning (collapse_jax/memory.py): the peak estimates and the query chunk that fits
a budget, from shapes alone (the engines' runs under a budget: tests/test_engines.py)."""
import pytest

import collapse_jax as cj
from collapse_jax import memory

CFG = cj.DecoderConfig(num_layers=2, d_model=16, num_heads=4, vocab_size=8, pe="rope",
                       mlp="swiglu", norm="rmsnorm")


def test_on_the_schedule_a_chunk_below_one_tile_needs_what_the_tile_needs():
  tiled = cj.get_policy("bfloat16")
  assert (memory.causal_peak_bytes(CFG, tiled, 1, 301, 16)
          == memory.causal_peak_bytes(CFG, tiled, 1, 301, tiled.row_tile)
          < memory.causal_peak_bytes(CFG, tiled, 1, 301, tiled.row_tile + 1))


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float8_e4m3fn"])
def test_planned_chunk_fits_the_budget_and_grows_with_it(name):
  pol = cj.get_policy(name).untiled()
  whole = memory.causal_peak_bytes(CFG, pol, 1, 301, None)
  assert memory.plan_query_chunk(CFG, pol, 1, 301, None) is None
  assert memory.plan_query_chunk(CFG, pol, 1, 301, whole) is None
  small = memory.plan_query_chunk(CFG, pol, 1, 301, whole / 4)
  large = memory.plan_query_chunk(CFG, pol, 1, 301, whole / 2)
  assert memory.MIN_QUERY_CHUNK <= small <= large < 301
  assert memory.causal_peak_bytes(CFG, pol, 1, 301, small) <= whole / 4
  assert memory.causal_peak_bytes(CFG, pol, 1, 301, large) <= whole / 2
  # two seeds need about twice the bytes
  assert memory.causal_peak_bytes(CFG, pol, 2, 301, small) == 2 * memory.causal_peak_bytes(
      CFG, pol, 1, 301, small)


def test_what_cannot_fit_is_refused_in_one_line_naming_the_flag():
  pol = cj.get_policy("bfloat16").untiled()
  with pytest.raises(ValueError, match=r"needs about .* [GM]iB .*raise --memory_budget") as e:
    memory.plan_query_chunk(CFG, pol, 1, 301, 1000.0)
  assert "\n" not in str(e.value)


def test_appended_stage_grows_with_the_chunk_of_lengths():
  pol = cj.get_policy("bfloat16").untiled()
  sizes = [memory.appended_peak_bytes(CFG, pol, 1, 300, c) for c in (1, 2, 8, 32)]
  assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_size_reads_in_mib_or_gib():
  assert memory.size(3 * 2 ** 20) == "3.0 MiB"
  assert memory.size(2 * memory.GiB) == "2.00 GiB"


def test_process_rss_sees_a_quarter_gib_touched_and_never_exceeds_the_peak():
  """memory.process_rss_gib (what sweep.run_grid writes into each cell's record): resident
  and peak GiB; touching 256 MiB raises both by about that much."""
  import numpy as np
  memory.release()  # garbage from earlier tests, freed during the allocation, would offset it
  now0, peak0 = memory.process_rss_gib()
  assert 0 < now0 <= peak0
  block = np.ones(2 ** 25, np.float64)  # 256 MiB, every page written
  now1, peak1 = memory.process_rss_gib()
  assert now1 - now0 >= 0.2 and peak1 >= now1 and peak1 >= peak0
  del block


def test_release_keeps_compiled_programs_unless_told_to_drop_them():
  """memory.release between cells: programs stay (a sweep's seeds share them) unless
  ``drop_compiled`` (the real-model apps: each cell compiles its own)."""
  import jax
  f = jax.jit(lambda x: x + 1)
  f(1.0)
  memory.release()
  assert f._cache_size() == 1
  memory.release(drop_compiled=True)
  assert f._cache_size() == 0
  from collapse_jax import records  # end_cell: release, then the record's RUN_KEYS for RSS
  f(1.0)
  got = memory.end_cell()
  assert f._cache_size() == 1 and set(got) < set(records.RUN_KEYS) and got["rss_gib"] > 0



@pytest.mark.slow  # about 30 s: two compiles of an 18-layer step
def test_the_segment_step_grows_with_its_cache_as_estimated():
  """memory_analysis of the compiled segment step (arguments and temporaries) of a Gemma 3
  270M-shaped float32 model (its layers, widths, heads, windows; a 64-token vocabulary) grows
  with the cache length M as ``segment_step_bytes`` estimates, within 25% (measured 0.95x).
  With each layer's cache slice copied, as before the cache was written in place (collect
  'cache'), it grew 2.50x the estimate (measured by putting the per-layer path back)."""
  import jax
  import jax.numpy as jnp
  from collapse_jax import engines, model, precision
  cfg = cj.DecoderConfig(
      num_layers=18, d_model=640, num_heads=4, num_kv_heads=1, head_dim=256, pe="rope",
      norm="gemma_rmsnorm", mlp="geglu", mlp_dim=2048, vocab_size=64, embed_scale=True,
      qk_norm=True, post_norms=True, layer_windows=((512,) * 5 + (None,)) * 3,
      layer_rope_thetas=((1e4,) * 5 + (1e6,)) * 3, query_scale=0.0625)
  pol = precision.get_policy("float32")
  params = jax.eval_shape(lambda p: jax.tree_util.tree_map(lambda x: x[None], p),
                          pol.cast_params(model.init_params(cfg, jax.random.PRNGKey(0))))
  seg, got = 256, {}
  for M in (1024, 2048):
    step = engines._segment_step(cfg, pol, seg, M, engines._want(engines.COLLECT))
    cache = {k: jax.ShapeDtypeStruct((1, cfg.num_layers, 1, M, cfg.kv_heads, cfg.dh),
                                     jnp.float32) for k in ("k", "v")}
    a = step.lower(params, jax.ShapeDtypeStruct((1, seg), jnp.int32),
                   jax.ShapeDtypeStruct((), jnp.int32), cache).compile().memory_analysis()
    got[M] = a.temp_size_in_bytes + a.argument_size_in_bytes
  est = (memory.segment_step_bytes(cfg, pol, seg, 2048)
         - memory.segment_step_bytes(cfg, pol, seg, 1024))
  assert 0.75 < (got[2048] - got[1024]) / est < 1.25, (got, est)
