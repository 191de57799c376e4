"""collapse_jax.figures.gallery: the gallery directory appears whole (PNGs and index.html) or
not at all, and never over a run."""
import os

import pytest

from collapse_jax.figures import gallery


def test_the_gallery_writes_pngs_and_an_index_and_leaves_no_temporaries(tmp_path):
  out = tmp_path / "gallery"
  found = gallery.write_gallery(str(out), ["isa", "tasks_bridge"], log=lambda *_: None)
  assert found == {"isa": [], "tasks_bridge": []}
  assert sorted(os.listdir(out)) == ["index.html", "isa.png", "tasks_bridge.png"]
  index = (out / "index.html").read_text()
  assert "<img src='isa.png'" in index and "render checks pass" in index
  assert open(out / "isa.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == ["gallery"]


def test_a_full_directory_or_an_unknown_figure_is_refused_before_drawing(tmp_path):
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "results.json").write_text("{}")
  with pytest.raises(FileExistsError, match="already holds files"):
    gallery.write_gallery(str(tmp_path / "old"), ["isa"])
  with pytest.raises(KeyError, match="unknown figure"):
    gallery.write_gallery(str(tmp_path / "new"), ["no_such_figure"])
  assert sorted(os.listdir(tmp_path)) == ["old"]


def test_a_failure_while_drawing_removes_the_half_written_directory(tmp_path, monkeypatch):
  def broken(name, path=None):
    if name == "tasks_bridge":
      raise RuntimeError("drawing failed")
    return []
  monkeypatch.setattr(gallery, "draw_checked", broken)
  with pytest.raises(RuntimeError, match="drawing failed"):
    gallery.write_gallery(str(tmp_path / "g"), ["isa", "tasks_bridge"], log=lambda *_: None)
  assert os.listdir(tmp_path) == []
