"""The README and docs/: every fenced bash block that needs only bundled or ../shared data runs as
written, every other block is listed with why not, and every relative link leads to a file."""

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

from conftest import REPO, subprocess_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```bash\n(.*?)^\1```", re.M | re.S)

# (page, the block's first line) -> why the block is not run.
NOT_RUN = {
    ("README.md", "bash demo.sh"):
        "the set-up commands themselves: .ci/run is this suite, demo.sh installs with pip and "
        "fuses TNO five ways (its job runs in test_evaluation.py on the bundled pairs)",
    ("README.md", "python train.py --config configs/smoke.py --workdir out/smoke"):
        "training: minutes for the smoke config (test_training.py trains the tests' smaller "
        "config through train.py), days and ImageNet weights for the paper's; tensorboard "
        "serves forever",
    ("docs/training.md", "python train.py --config configs/default.py --workdir runs/paper \\"):
        "the same training commands as the README's, and plot and tensorboard of that run",
    ("docs/training.md", "python train.py --config configs/smoke.py --workdir runs/pair \\"):
        "a two-process cluster (test_multihost.py runs one with the tests' training config)",
    ("docs/training.md", "python train.py --config configs/default.py --workdir /shared/runs/paper \\"):
        "a template for N hosts",
    ("docs/fusing.md", "python -m s4fusion_jax convert-reference model.pkl checkpoints/s4fusion"):
        "needs the user's downloads: a reference checkpoint, torchvision's weights, TNO's folder",
    ("docs/parity.md", "python -m s4fusion_jax convert-reference model.pkl checkpoints/s4fusion"):
        "needs a checkpoint of the reference (test_reference_export.py converts the fixtures')",
    ("docs/data.md", "python -m s4fusion_jax prepare msrs /data/MSRS"):
        "datasets the user downloads (test_data.py builds each from a small stand-in folder)",
    ("docs/evaluation.md", "python evaluate.py --data ~/tensorflow_datasets/road_scene/1.0.0 --split test --out out/rs --checkpoint DIR"):
        "a dataset the user downloads and prepares, and a model of theirs",
    ("docs/ablations.md", "python -m s4fusion_jax ablate --train ../shared/data/roadscene_train --test ../shared/data/tno \\"):
        "hours of training (test_ablations.py runs the job with 2 steps per variant)",
    ("docs/performance.md",
     "python -m bench.device_check --golden ../shared/golden/golden_s4fusion_61x73.npz"):
        "needs a GPU or TPU: parity, fuse, train step and compile times at the paper's sizes",
    ("docs/performance.md", "bash bench/device_session.sh"):
        "needs a lent GPU: the device check and as many steps of stage 6 as its time allows",
}


def blocks():
  """[(page name, first line, text)] of every fenced bash block."""
  found = []
  for page in PAGES:
    for match in BLOCK.finditer(page.read_text()):
      text = "\n".join(line[len(match.group(1)):] for line in match.group(2).splitlines())
      found.append((str(page.relative_to(REPO)), text.splitlines()[0].split("  #")[0].rstrip(),
                    text))
  return found


def test_every_block_not_run_is_listed_and_every_listing_is_a_block():
  keys = [(page, first) for page, first, _ in blocks()]
  assert len(keys) == len(set(keys)), "two blocks of a page start alike"
  stale = set(NOT_RUN) - set(keys)
  assert not stale, f"listed but not in the docs: {stale}"
  assert len(NOT_RUN) <= len(keys) // 2 + 2, "the list of blocks not run is meant to be short"


def sandbox(folder):
  """A folder laid out as the checkout (its entries linked) with ../shared beside it, so a
  block runs as written and writes its out/ and runs/ there."""
  checkout = folder / "checkout"
  checkout.mkdir(parents=True)
  for entry in REPO.iterdir():
    if entry.name not in ("out", "runs", ".git"):
      (checkout / entry.name).symlink_to(entry)
  (folder / "shared").symlink_to((REPO.parent / "shared").resolve())
  return checkout


def test_blocks_run_as_written(tmp_path):
  env = subprocess_env(optimize=True)  # the README's evaluation: the bundled model on TNO
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  made = set()
  ran = 0
  for i, (page, first, text) in enumerate(blocks()):
    if (page, first) in NOT_RUN:
      continue
    checkout = sandbox(tmp_path / str(i))  # each block on its own, as a reader runs it
    env["PYTHONPATH"] = str(checkout)
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=checkout, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{page}: {first}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    print(f"{time.perf_counter() - start:6.1f} s  {page}: {first}")
    if (checkout / "out").is_dir():
      made.update(os.listdir(checkout / "out"))
    ran += 1
  assert ran >= 8
  assert {"fused_01.png", "demo_fused", "bundled.npz", "bundled_ckpt", "delta_stats",
          "curves_stage4.png", "tno", "tno_max", "demo", "tno_avg"} <= made
  # The README's results row is what its evaluation command measures.
  row = re.search(r"^\| \*\*S4Fusion, bundled\*\* \|(.*)\|$", (REPO / "README.md").read_text(), re.M)
  shown = [float(c.strip(" *")) for c in row.group(1).split("|")]
  names = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG")
  readme_run = next(p for p in tmp_path.iterdir() if (p / "checkout" / "out" / "tno").is_dir())
  measured = json.loads((readme_run / "checkout" / "out" / "tno" / "metrics.json").read_text())
  for name, value in zip(names, shown):
    assert abs(measured["mean"][name] - value) <= 2e-4 * max(1.0, abs(value)), name


def test_python_blocks_parse_and_import_what_exists():
  """The Python examples are not run (they need the reader's arrays), but they must parse and
  every name they import from the package must exist."""
  checked = 0
  for page in PAGES:
    for match in re.finditer(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S):
      tree = ast.parse(match.group(1))
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("s4fusion_jax"):
          module = importlib.import_module(node.module)
          for alias in node.names:
            assert hasattr(module, alias.name) or importlib.util.find_spec(
                f"{node.module}.{alias.name}"), f"{page.name}: {node.module}.{alias.name}"
            checked += 1
  assert checked >= 5


def test_relative_links_lead_to_files():
  link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
  broken = []
  for page in PAGES:
    for target in link.findall(page.read_text()):
      if "://" in target:
        continue
      if not (page.parent / target).exists():
        broken.append(f"{page.relative_to(REPO)}: {target}")
  assert not broken, broken
