"""evaluate.py end to end on TNO, the fusion command, colour handling, bad input, validation."""

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import REPO, run, shared_path, subprocess_env
from configs import smoke
from s4fusion_jax import __main__ as cli
from s4fusion_jax.data import image_files
from s4fusion_jax.data import image_grid
from s4fusion_jax.evaluation import evaluator
from s4fusion_jax.evaluation import inference
from s4fusion_jax.evaluation import published
from s4fusion_jax.evaluation import result_tables
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import color
from s4fusion_jax.objectives import metrics
from s4fusion_jax.training import samples
from s4fusion_jax.training import trainer

TINY = model_lib.ModelConfig(dims=(8, 16, 32), depths=(1, 1, 1), depths_decoder=(1, 1, 1),
                             d_state=4, fusion_d_state=6)


def evaluate(*args, env=None):
  """evaluate.py with ``args`` in a fresh process, compiled with LLVM's optimisations."""
  return run(["evaluate.py", "--progress=false", *args], env, optimize=True)


def fused_pngs(out):
  """The fused images in ``out``, without the temporary file of a write a kill cut short."""
  return sorted(name for name in os.listdir(out / "fused") if not name.startswith("."))


def check_outputs(out, names):
  assert fused_pngs(out) == sorted(os.path.splitext(n)[0] + ".png" for n in names)
  result = json.loads((out / "metrics.json").read_text())
  assert set(result["per_image"]) == set(names)
  assert set(result["mean"]) == set(metrics.NAMES)
  lines = (out / "metrics.csv").read_text().splitlines()
  assert lines[0].split(",") == ["name", *metrics.NAMES] and len(lines) == len(names) + 1
  assert "| EN |" in (out / "metrics.md").read_text()
  assert Image.open(out / "samples.png").size[1] > 0
  return result


def test_average_baseline_on_all_of_tno(tmp_path):
  proc = evaluate("--data", str(shared_path("data", "tno")), "--out", str(tmp_path),
                  "--method", "average")
  assert proc.returncode == 0, proc.stderr[-2000:]
  names = sorted(os.listdir(shared_path("data", "tno", "ir")))
  result = check_outputs(tmp_path, names)
  # The saved average is what metrics were computed on: check one image by hand.
  ir = np.asarray(Image.open(shared_path("data", "tno", "ir", names[0])).convert("L"), float)
  vi = np.asarray(Image.open(shared_path("data", "tno", "vi", names[0])).convert("L"), float)
  fused = np.asarray(Image.open(tmp_path / "fused" / names[0]).convert("L"), float)
  assert np.abs(fused - (ir + vi) / 2).max() <= 0.5 + 1e-9
  ours = metrics.compute(fused, metrics.evaluator_gray(
      np.asarray(Image.open(shared_path("data", "tno", "ir", names[0])).convert("RGB"))),
                         metrics.evaluator_gray(np.asarray(Image.open(
                             shared_path("data", "tno", "vi", names[0])).convert("RGB"))))
  assert ours["Qabf"] == pytest.approx(result["per_image"][names[0]]["Qabf"], rel=1e-12)


def fused_in_run(proc):
  assert proc.returncode == 0, proc.stderr[-2000:]
  return int(re.search(r"fused (\d+) pairs in this run", proc.stdout).group(1))


def test_tiny_random_model_on_tno_killed_and_resumed(tmp_path):
  checkpoint.save_model(tmp_path / "tiny", model_lib.create(TINY))
  data = tmp_path / "tno"
  names = sorted(os.listdir(shared_path("data", "tno", "ir")))[:4]
  for sub in ("ir", "vi"):
    os.makedirs(data / sub)
    for name in names:
      shutil.copy(shared_path("data", "tno", sub, name), data / sub / name)
  args = ["--data", str(data), "--checkpoint", str(tmp_path / "tiny")]
  assert fused_in_run(evaluate(*args, "--out", str(tmp_path / "straight"))) == 4
  check_outputs(tmp_path / "straight", names)
  # Killed (SIGKILL) once its first image is written, then run again with the same arguments:
  # it fuses the pairs the killed run did not record.
  out = tmp_path / "resumed"
  with open(tmp_path / "killed.log", "w") as log:
    killed = subprocess.Popen([sys.executable, "evaluate.py", "--progress=false", *args, "--out",
                               str(out)], cwd=REPO, env=subprocess_env(optimize=True), stdout=log,
                              stderr=log)
    while killed.poll() is None and not (os.path.isdir(out / "fused") and fused_pngs(out)):
      time.sleep(0.01)
    killed.kill()
  assert killed.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
  assert 1 <= len(fused_pngs(out)) < 4 and not (out / "metrics.json").exists()
  recorded = 0  # the pairs the killed run recorded as done, a line each after the run's
  for line in (out / "progress.jsonl").read_text().splitlines()[1:]:
    with contextlib.suppress(json.JSONDecodeError):  # a line the kill cut short
      recorded += "name" in json.loads(line)
  assert fused_in_run(evaluate(*args, "--out", str(out))) == 4 - recorded
  for table in ("metrics.json", "metrics.csv", "metrics.md"):
    assert (out / table).read_text() == (tmp_path / "straight" / table).read_text(), table
  assert fused_in_run(evaluate(*args, "--out", str(out))) == 0  # all done: nothing to fuse
  # Another fuser in the same folder starts afresh.
  assert fused_in_run(evaluate("--data", str(data), "--out", str(out), "--method", "average")) == 4
  check_outputs(out, names)


def test_evaluate_without_a_model_or_method_says_what_to_pass(tmp_path, monkeypatch):
  monkeypatch.setattr(inference, "BUNDLED_MODEL", str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError, match="--checkpoint.*--method"):
    inference.Fuser.from_flags()


def test_colour_visible_is_fused_in_y_and_recoloured():
  rng = np.random.default_rng(0)
  ir = rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)
  vi = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  fused = inference.Fuser(method="average").fuse(ir, vi)
  assert fused.shape == (20, 30, 3)
  y, cr, cb = color.rgb_to_ycrcb(vi / 255.0)
  expected = image_files.to_uint8(color.ycrcb_to_rgb(np.clip((ir / 255.0 + y) / 2, 0, 1), cr, cb))
  np.testing.assert_array_equal(fused, expected)
  grey = np.repeat(vi[..., :1], 3, -1)
  assert inference.Fuser(method="max").fuse(ir, grey).shape == (20, 30, 1)


def test_copy_baselines_give_back_their_source():
  rng = np.random.default_rng(1)
  ir = rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)
  grey = np.repeat(rng.integers(0, 256, (20, 30, 1), dtype=np.uint8), 3, -1)
  np.testing.assert_array_equal(inference.Fuser(method="infrared").fuse(ir, grey), ir)
  np.testing.assert_array_equal(inference.Fuser(method="visible").fuse(ir, grey), grey[..., :1])
  with pytest.raises(ValueError, match="unknown method 'min'"):
    inference.Fuser(method="min")


def test_the_command_line_plots_without_importing_jax(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
  script = ("import sys; from s4fusion_jax import __main__ as cli; "
            f"code = cli.main(['plot', {str(tmp_path)!r}]); "
            "print(code, 'jax' in sys.modules)")
  proc = run(["-c", script], check=True)
  assert proc.stdout.split()[-2:] == ["0", "False"], proc.stdout + proc.stderr
  assert (tmp_path / "curves.png").exists()


def test_model_fuser_pads_any_size_and_matches_fuse():
  model = model_lib.create(TINY)
  rng = np.random.default_rng(1)
  ir = rng.integers(0, 256, (33, 47, 1), dtype=np.uint8)
  vi = np.repeat(rng.integers(0, 256, (33, 47, 1), dtype=np.uint8), 3, -1)
  fused = inference.Fuser(model=model).fuse(ir, vi)
  direct = nnx.jit(model_lib.fuse)(model, (ir / 255.0).astype(np.float32)[None],
                                   (vi[..., :1] / 255.0).astype(np.float32)[None])[0]
  np.testing.assert_array_equal(fused, image_files.to_uint8(direct))


def write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_fuse_command_folders_and_errors(tmp_path, capsys):
  rng = np.random.default_rng(2)
  for name in ("a.png", "b.png"):
    write(tmp_path / "ir" / name, rng.integers(0, 256, (24, 32), dtype=np.uint8))
    write(tmp_path / "vi" / name, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
  # A 16-bit infrared image is read as round(v / 257).
  write(tmp_path / "ir" / "c.png", (rng.integers(0, 256, (24, 32)) * 257).astype(np.uint16))
  write(tmp_path / "vi" / "c.png", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
  assert cli.main(["fuse", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                   "--out", str(tmp_path / "out"), "--method", "max"]) == 0
  assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png", "c.png"]

  write(tmp_path / "ir" / "lonely.png", np.zeros((24, 32), np.uint8))
  write(tmp_path / "vi" / "small.png", np.zeros((20, 32, 3), np.uint8))
  write(tmp_path / "ir" / "small.png", np.zeros((24, 32), np.uint8))
  (tmp_path / "vi" / "broken.png").write_bytes(b"nope")
  (tmp_path / "ir" / "broken.png").write_bytes(b"nope")
  capsys.readouterr()
  assert cli.main(["fuse", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                   "--out", str(tmp_path / "out2"), "--method", "max"]) == 2
  err = capsys.readouterr().err
  assert "3 bad pair(s)" in err and "lonely.png: no visible image" in err
  assert "small.png: infrared 32x24 but visible 32x20" in err and "broken.png: cannot read" in err
  assert not (tmp_path / "out2").exists()
  assert cli.main(["fuse", "--ir", str(tmp_path / "ir" / "a.png"), "--vi",
                   str(tmp_path / "vi" / "small.png"), "--out", str(tmp_path / "x.png"),
                   "--method", "max"]) == 2
  assert not (tmp_path / "x.png").exists()
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_evaluator_gray_follows_opencv():
  rgb = np.array([[[10, 200, 30], [255, 255, 255]]], np.uint8)
  expected = np.round(np.float32(30) * np.float32(0.114) + np.float32(200) * np.float32(0.587)
                      + np.float32(10) * np.float32(0.299))
  np.testing.assert_array_equal(metrics.evaluator_gray(rgb), [[expected, 255]])
  np.testing.assert_array_equal(metrics.evaluator_gray(rgb[..., :1]), [[10, 255]])


def test_demo_on_the_bundled_pairs(tmp_path):
  checkpoint.save_model(tmp_path / "tiny", model_lib.create(TINY))
  text = evaluator.demo(str(tmp_path / "demo"), data=str(REPO / "demo_data" / "tno"),
                        checkpoint_dir=str(tmp_path / "tiny"), progress=False)
  assert text.startswith("Means over a sample of 4 pairs")
  tables = [line for line in text.splitlines() if line.startswith("| method")]
  assert tables == ["| method | " + " | ".join(metrics.VALIDATION_COLUMNS) + " |"] * 2
  rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
  assert rows == ["| method", "| S4Fusion (this model)", "| method", "| average", "| max",
                  "| infrared", "| visible"]  # no published rows on a sample
  assert "**" not in text
  names = sorted(os.listdir(REPO / "demo_data" / "tno" / "ir"))
  for method in ("S4Fusion", *inference.METHODS):
    check_outputs(tmp_path / "demo" / method, names)
  assert (tmp_path / "demo" / "comparison.md").read_text() == text


def test_compare_marks_the_best():
  table = evaluator.compare({"a": {"MI": 1.0, "SF": 3.0}, "b": {"MI": 2.0, "SF": 1.0}},
                            names=("MI", "SF"))
  assert "| a | 1.0000 | **3.0000** |" in table and "| b | **2.0000** | 1.0000 |" in table
  table = evaluator.compare({"a": {"MI": 1.004}, "b": {"MI": 1.0, "SF": 2.0}}, names=("MI", "SF"),
                            key=lambda metric, value: round(value, 2))
  assert "| a | **1.0040** | - |" in table and "| b | **1.0000** | **2.0000** |" in table


def test_result_tables_lay_out_one_header_and_its_rows():
  head, rows = ["method", "MI", "note"], [["a", 1.5, "x|y"], ["b, c", "2", 'say "hi"']]
  assert result_tables.markdown(head, rows).splitlines() == [
      "| method | MI | note |", "|---|---:|---:|", r"| a | 1.5 | x\|y |",
      '| b, c | 2 | say "hi" |']
  assert list(csv.reader(io.StringIO(result_tables.csv_text(head, rows)))) == [
      head, ["a", "1.5", "x|y"], ["b, c", "2", 'say "hi"']]
  for make in (result_tables.markdown, result_tables.csv_text):
    with pytest.raises(ValueError, match="2 cells under a header of 3"):
      make(head, [["a", 1]])


def test_report_puts_the_published_rows_beside_ours_on_tno_only():
  ours = dict(EN=7.2, SD=40.0, SF=13.15, MI=2.5, SCD=1.8, VIF=0.774, Qabf=0.5, SSIM=0.5176,
              AG=4.0)
  baselines = {"max": {k: 1.0 for k in metrics.VALIDATION_COLUMNS}}
  text = evaluator.report(ours, baselines, "/data/tno", 25, on_tno=True)
  for method in published.tno_results():
    assert text.count(f"| {method} |") == 1
  # Two decimals decide (SSIM as the sum): SF 13.15 and VIF 0.77 tie with CDDFuse; SSIM
  # 1.0352 -> 1.04 beats 1.03.
  assert "CDDFuse on 4 of 8 (EN, MI, SCD, SSIM)" in text
  assert "| S4Fusion (this model) | **7.2000** | 40.0000 | 13.1500 |" in text
  # Published rows at their published precision (SSIM: half the two-decimal sum), ours at four.
  assert "| CDDFuse | 7.12 | **46.00** | 13.15 |" in text  # RFN-Nest's SF 15.71 is best
  assert "| DIDFuse | 6.97 | 45.12 |" in text and "| 0.515 |" in text  # CDDFuse's SSIM 1.03 / 2
  assert "| max | 1.0000 |" in text and "MI and VIF" in text
  sample = evaluator.report(ours, baselines, "/data/x", 4, on_tno=False)
  assert "CDDFuse" not in sample and "a sample of 4 pairs" in sample


def test_published_table_and_the_tie_rule():
  table = published.tno_results()
  assert len(table) == 8 and all(tuple(r) == metrics.PUBLISHED_COLUMNS for r in table.values())
  assert table["CDDFuse"]["SSIM"] == pytest.approx(0.515) and table["SDNet"]["SCD"] == 1.49
  cdd = table["CDDFuse"]
  assert published.wins(dict(cdd), cdd) == []  # equal is not better
  assert published.wins(dict(cdd, VIF=0.7749, SSIM=0.5174), cdd) == []  # ties at 2 decimals
  assert published.wins(dict(cdd, VIF=0.7751, SSIM=0.5176), cdd) == ["VIF", "SSIM"]


def test_the_published_pairs_are_recognised_by_their_pixels(tmp_path):
  tno = {name: ir for name, ir, _ in evaluator.pairs(shared_path("data", "tno"))}
  assert published.is_tno_set(tno)
  assert not published.is_tno_set({k: v for k, v in tno.items() if k != "01.png"})
  changed = dict(tno)
  changed["07.png"] = changed["07.png"].copy()
  changed["07.png"][0, 0] ^= 1
  assert not published.is_tno_set(changed)
  for name, ir, _ in evaluator.pairs(str(REPO / "demo_data" / "tno")):  # re-encoded files
    assert published.fingerprint(ir) == published.TNO_PAIRS[name]


def test_sample_rows_of_different_widths_leave_no_bands():
  rng = np.random.default_rng(0)
  wide = rng.integers(1, 256, (30, 90, 1), np.uint8)
  tall = rng.integers(1, 256, (60, 40, 3), np.uint8)
  image = image_grid.image_rows([[wide, wide], [tall, tall, tall]], height=20, header=["a", "b"])
  assert image.shape == (18 + 20 + round(20 * 120 / 39), 120, 3)  # rows 120 and 3 x 13 wide
  body = image[18:]
  assert body.min(axis=(1, 2)).max() > 0 and (body.reshape(-1, 3).max(1) > 0).all()


def test_figure_command_draws_a_row_per_pair(tmp_path, capsys):
  data = REPO / "demo_data" / "tno"
  names = ["08.png", "07.png"]  # 595 x 328 first: the widest row sets the figure's width
  for label, level in (("a", 60), ("b", 200)):
    for name in names:  # fused images the size of their pair, as fuse writes them
      height, width = image_files.read_ir(data / "ir" / name).shape[:2]
      image_files.write_png(tmp_path / label / "fused" / name,
                            np.full((height, width, 1), level, np.uint8))
  out = tmp_path / "figure.png"
  assert cli.main(["figure", "--data", str(data), "--fused", f"old={tmp_path / 'a'}",
                   f"new={tmp_path / 'b' / 'fused'}", "--names", *names, "--out", str(out)]) == 0
  image = np.asarray(Image.open(out))
  first = image_files.read_ir(data / "ir" / names[0])
  # Four columns at one height: the widest pair's row is exactly four of its images wide.
  assert image.shape[1] == 4 * round(first.shape[1] * evaluator.SAMPLE_HEIGHT / first.shape[0])
  row = image[18:18 + evaluator.SAMPLE_HEIGHT]
  quarter = image.shape[1] // 4
  assert abs(int(row[:, 2 * quarter + 5:3 * quarter - 5].mean()) - 60) <= 1
  assert abs(int(row[:, 3 * quarter + 5:].mean()) - 200) <= 1
  assert cli.main(["figure", "--data", str(data), "--fused", f"old={tmp_path / 'a'}",
                   "--names", "nope.png", "--out", str(out)]) == 2
  assert cli.main(["figure", "--data", str(data), "--fused", str(tmp_path / "a"),
                   "--names", *names, "--out", str(out)]) == 2
  os.remove(tmp_path / "a" / "fused" / names[1])
  assert cli.main(["figure", "--data", str(data), "--fused", f"old={tmp_path / 'a'}",
                   "--names", *names, "--out", str(tmp_path / "other.png")]) == 2
  err = capsys.readouterr().err
  assert "pairs ['nope.png'] are not in" in err and "--fused takes LABEL=FOLDER" in err
  assert f"no fused image of {names[1]} for 'old'" in err
  assert not (tmp_path / "other.png").exists()


def test_validation_uses_the_first_pairs_by_name(tmp_path):
  config = smoke.get_config()  # validates on ../shared/data/tno
  config.data.data_dir = str(tmp_path / "tfds")
  config.eval_pairs, config.eval_size = 2, 61
  validation = samples.Validation(config, str(tmp_path / "work"), model_lib.fuse,
                                  trainer.prepare(config.data.val, config.data.data_dir))
  names = sorted(os.listdir(shared_path("data", "tno", "ir")))[:2]
  expected = [samples.centre_crop(image_files.read_ir(shared_path("data", "tno", "ir", name)), 61)
              for name in names]
  np.testing.assert_array_equal(validation.ir, np.stack(expected))
