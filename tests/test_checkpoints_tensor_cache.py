"""The dequantized-tensor cache (collapse_jax/checkpoints/tensor_cache.py): a hit returns
what the read returned, keyed by the file's contents; nothing half-written is ever served."""
import os

import numpy as np

from collapse_jax.checkpoints import tensor_cache


def _reader(calls):
  def read(path):
    calls.append(path)
    data = path.read_bytes()
    return {"size": len(data)}, {"w": np.frombuffer(data, np.uint8).astype(np.float32)}
  return read


def test_a_hit_returns_the_read_and_a_changed_file_misses(tmp_path):
  f = tmp_path / "m.gguf"
  f.write_bytes(b"abcd")
  calls, cache = [], tmp_path / "cache"
  md, t = tensor_cache.cached_read(f, cache, _reader(calls))
  md2, t2 = tensor_cache.cached_read(f, cache, _reader(calls))
  assert len(calls) == 1 and md == md2 == {"size": 4}
  np.testing.assert_array_equal(t2["w"], t["w"])
  assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npz"]  # no temporaries
  f.write_bytes(b"abce")  # same size and name, other contents: another key
  tensor_cache.cached_read(f, cache, _reader(calls))
  assert len(calls) == 2 and len(list(cache.iterdir())) == 4


def test_no_cache_reads_every_time_and_a_missing_npz_is_a_miss(tmp_path, monkeypatch):
  f = tmp_path / "m.gguf"
  f.write_bytes(b"xyz")
  calls = []
  monkeypatch.delenv(tensor_cache.CACHE_ENV, raising=False)
  assert tensor_cache.cache_dir(None) is None and tensor_cache.cache_dir(False) is None
  tensor_cache.cached_read(f, None, _reader(calls))
  tensor_cache.cached_read(f, False, _reader(calls))
  assert len(calls) == 2
  monkeypatch.setenv(tensor_cache.CACHE_ENV, "1")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert tensor_cache.cache_dir(None) == tmp_path / "xdg" / "collapse_jax"
  cache = tmp_path / "c"
  tensor_cache.cached_read(f, cache, _reader(calls))
  for p in cache.glob("*.npz"):  # a killed write: metadata there, tensors not
    os.remove(p)
  tensor_cache.cached_read(f, cache, _reader(calls))
  assert len(calls) == 4
