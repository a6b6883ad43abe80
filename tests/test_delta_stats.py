"""The paper's Table 5 (delta_stats) and the matplotlib charts."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from s4fusion_jax import __main__ as cli
from s4fusion_jax.data import image_files
from s4fusion_jax.evaluation import charts
from s4fusion_jax.evaluation import delta_stats
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.interop import functional
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import color
from s4fusion_jax.numerics import sizes

# Two scales, two CMSA blocks per scale (a layer's value is a mean over blocks).
SMALL = model_lib.ModelConfig(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1), d_state=4,
                              fusion_d_state=6, fusion_blocks=2)
# Three sizes whose buckets (size rule 6 m + 1 for two scales) are larger than their
# reference-padded sizes: the bucket's padding must not count.
SIZES = ((40, 30), (20, 50), (52, 33))


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("pairs")
  rng = np.random.default_rng(0)
  for i, (height, width) in enumerate(SIZES):
    image_files.write_png(folder / "ir" / f"{i}.png", rng.integers(0, 256, (height, width, 1),
                                                                   dtype=np.uint8))
    image_files.write_png(folder / "vi" / f"{i}.png", rng.integers(0, 256, (height, width, 3),
                                                                   dtype=np.uint8))
  rule = SMALL.size_rule()
  assert all(sizes.bucket_length(n, *rule) > sizes.valid_length(n, *rule)
             for n in (SIZES[0][0], SIZES[1][1], SIZES[2][0]))
  return folder


def numpy_table(net, variables, folder):
  """Table 5 from the captured arrays of each pair at its own padded size (every position
  valid), with NumPy means."""
  per_image = []
  for i in range(len(SIZES)):
    ir = image_files.read_ir(folder / "ir" / f"{i}.png").astype(np.float64) / 255
    vi = color.rgb_to_y(image_files.read_vi(folder / "vi" / f"{i}.png").astype(np.float64) / 255)
    (_, scans), _ = model_lib.run_placed(SMALL, lambda a, b, _: jax.jit(net.intermediates)(
        variables, a, b), ir[None], vi[None], bucket=False)
    terms = jax.tree.map(np.asarray, functional.cross_scan_terms(variables, scans))
    per_image.append({block: {form: {m: forms[form][m].mean() for m in ("ir", "vi")}
                              for form in delta_stats.FORMS} for block, forms in terms.items()})
  blocks = {block: {form: {m: np.mean([p[block][form][m] for p in per_image])
                           for m in ("ir", "vi")} for form in delta_stats.FORMS}
            for block in per_image[0]}
  layers = {f"Layer{s + 1}": {form: {m: np.mean([blocks[f"fusion_{s}/block_{k}"][form][m]
                                                 for k in range(SMALL.fusion_blocks)])
                                     for m in ("ir", "vi")} for form in delta_stats.FORMS}
            for s in range(SMALL.levels)}
  return blocks, layers


def test_delta_stats_is_the_numpy_mean_over_valid_positions(pairs_folder):
  with jax.enable_x64(True):
    config = dataclasses.replace(SMALL, dtype="float64", param_dtype="float64")
    net, variables = functional.from_config(config, seed=3)
    stats = delta_stats.compute(net, variables, str(pairs_folder), progress=False)
    blocks, layers = numpy_table(net, variables, pairs_folder)
  assert stats["pairs"] == 3
  assert sorted(stats["blocks"]) == sorted(blocks) == [
      "fusion_0/block_0", "fusion_0/block_1", "fusion_1/block_0", "fusion_1/block_1"]
  for ours, theirs in ((stats["blocks"], blocks), (stats["layers"], layers)):
    for name in theirs:
      for form in delta_stats.FORMS:
        for m in ("ir", "vi"):
          # delta_proj's mean is a sum of terms of both signs: 1e-11 absolute on values ~0.1-1
          np.testing.assert_allclose(ours[name][form][m], theirs[name][form][m], rtol=1e-10,
                                     atol=1e-11)
  layer = stats["layers"]["Layer1"]
  assert layer["delta"]["ir"] > 0 and layer["delta_proj"]["ir"] != layer["delta_biased"]["ir"]


def test_delta_stats_command_writes_the_table_and_chart(pairs_folder, tmp_path, capsys):
  net, variables = functional.from_config(SMALL, seed=3)
  checkpoint.save_model(str(tmp_path / "model"), net.module(variables))
  out = tmp_path / "stats"
  assert cli.main(["delta-stats", "--data", str(pairs_folder), "--checkpoint",
                   str(tmp_path / "model"), "--out", str(out), "--no-progress"]) == 0
  printed = capsys.readouterr().out
  assert "| Layer1 |" in printed and "| fusion_1/block_1 |" in printed
  stats = json.loads((out / "delta_stats.json").read_text())
  expected = delta_stats.compute(net, variables, str(pairs_folder), progress=False)
  assert stats["layers"].keys() == expected["layers"].keys()
  np.testing.assert_allclose(stats["layers"]["Layer2"]["delta_proj"]["vi"],
                             expected["layers"]["Layer2"]["delta_proj"]["vi"], rtol=1e-6)
  rows = (out / "delta_stats.csv").read_text().splitlines()
  assert rows[0].startswith("layer,delta_proj I,delta_proj V") and len(rows) == 1 + 2 + 4
  assert "Delta_I > Delta_V in every layer" in (out / "delta_stats.md").read_text()
  assert (out / "delta_stats.png").read_bytes()[:4] == b"\x89PNG"
  assert cli.main(["delta-stats", "--data", str(tmp_path / "nowhere"), "--checkpoint",
                   str(tmp_path / "model"), "--out", str(tmp_path / "other")]) == 2
  assert "nowhere" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_observations_follow_the_table():
  layer = lambda ir, vi: {"delta_proj": {"ir": ir, "vi": vi}}
  stats = {"layers": {"Layer1": layer(-1.0, -2.0), "Layer2": layer(-3.0, -4.0)}}
  assert all(delta_stats.observations(stats).values())
  stats["layers"]["Layer2"] = layer(-3.0, -1.5)
  checks = delta_stats.observations(stats)
  assert not checks["Delta_I > Delta_V in every layer"] and not checks["Delta_V falls with depth"]
  assert checks["Delta_I falls with depth"]


def legend_texts(ax):
  return [t.get_text() for t in ax.get_legend().get_texts()]


def test_curves_have_labels_ticks_legends_and_log_scale_where_values_span_decades():
  steps = list(range(1, 41))
  series = {"loss": (steps, [10.0 / s**2 for s in steps]),  # spans three decades
            "loss_l1": (steps, [0.5 + 0.01 * s for s in steps]),
            "loss_ssim": (steps, [0.4] * 40), "lr": (steps, [1e-3] * 40),
            "val/Qabf": ([20, 40], [0.3, 0.35])}
  figure = charts.curves_figure(series)
  axes = {ax.get_title(): ax for ax in figure.axes}
  assert list(axes) == ["loss", "loss terms", "lr", "val/Qabf"]
  for title, ax in axes.items():
    assert ax.get_xlabel() == "step" and ax.get_ylabel()
    assert len(ax.get_xticks()) > 1 and len(ax.get_yticks()) > 1
    assert ax.get_legend() is not None
  assert axes["loss"].get_yscale() == "log" and axes["lr"].get_yscale() == "linear"
  assert legend_texts(axes["loss"]) == ["raw", "smoothed"]
  assert legend_texts(axes["loss terms"]) == ["loss_l1 raw", "loss_l1 smoothed",
                                              "loss_ssim raw", "loss_ssim smoothed"]
  raw, smoothed = axes["loss"].get_lines()
  assert raw.get_alpha() < 1 and smoothed.get_alpha() is None  # raw values faint
  np.testing.assert_allclose(smoothed.get_ydata(), charts.smooth(series["loss"][1]))
  assert axes["val/Qabf"].get_lines()[0].get_marker() == "o"
  # The smoothing is TensorBoard's: debiased, so a constant stays that constant.
  np.testing.assert_allclose(charts.smooth([2.0] * 5), 2.0)


def test_plot_command_writes_the_curves(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in range(1, 6):
      f.write(json.dumps({"step": step, "loss": 1.0 / step, "lr": 0.1}) + "\n")
    f.write(json.dumps({"step": 5, "val/Qabf": 0.3}) + "\n")
  assert cli.main(["plot", str(tmp_path)]) == 0
  assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
  os.rename(tmp_path / "metrics.jsonl", tmp_path / "kept.jsonl")
  assert cli.main(["plot", str(tmp_path / "kept.jsonl")]) == 0
  assert (tmp_path / "kept.png").read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
    charts.plot(str(tmp_path / "nowhere"))


def test_bar_and_delta_charts_have_labels_and_legends():
  figure = charts.bars_figure({"s4fusion": {"MI": 2.5, "SSIM": 0.7},
                               "add": {"MI": 2.1, "SSIM": 0.72}})
  assert [ax.get_title() for ax in figure.axes] == ["MI", "SSIM"]
  for ax in figure.axes:
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s4fusion", "add"]
    assert ax.get_ylabel() and ax.get_xlabel() and len(ax.get_yticks()) > 1
  assert [t.get_text() for t in figure.legends[0].get_texts()] == ["s4fusion", "add"]
  layers = {f"Layer{i}": {f: {"ir": -1.0 / i, "vi": -2.0 / i} for f in delta_stats.FORMS}
            for i in (1, 2, 3)}
  figure = charts.delta_figure(layers, delta_stats.FORMS)
  assert [ax.get_title() for ax in figure.axes] == list(delta_stats.FORMS)
  for ax in figure.axes:
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Layer1", "Layer2", "Layer3"]
    assert ax.get_ylabel().startswith("mean ") and "CMSA layer" in ax.get_xlabel()
    assert len(ax.get_yticks()) > 1
    heights = [p.get_height() for p in ax.patches]
    assert heights == [-1.0, -0.5, -1.0 / 3, -2.0, -1.0, -2.0 / 3]
  assert [t.get_text() for t in figure.legends[0].get_texts()] == [
      "infrared (Delta_I)", "visible (Delta_V)"]
