"""The package as pip installs it: built into a wheel, installed outside the checkout, it fuses
a pair from another directory with its bundled weights and reads its split lists."""

import json
import shutil
import subprocess
import sys

from conftest import REPO, subprocess_env


def test_the_installed_package_runs_from_another_directory(tmp_path):
  wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
  work.mkdir()
  source = tmp_path / "source"  # setuptools writes build/ into the tree it builds
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "out", "runs", "__pycache__", "*.egg-info"))
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                  str(source)], check=True, cwd=tmp_path, capture_output=True)
  subprocess.run([*pip, "install", "--no-deps", "--target", str(target),
                  *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
  env = {**subprocess_env(), "PYTHONPATH": str(target)}
  script = ("import json, s4fusion_jax\n"
            "from s4fusion_jax.data import datasets\n"
            "from s4fusion_jax.evaluation import inference\n"
            "from s4fusion_jax.interop import checkpoint\n"
            f"assert s4fusion_jax.__file__.startswith({str(target)!r}), s4fusion_jax.__file__\n"
            "print(json.dumps([checkpoint.read_model_config(inference.BUNDLED_MODEL).dims,\n"
            "                  len(datasets.read_name_list('roadscene_test_s4fusion.txt'))]))\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  dims, names = json.loads(proc.stdout.splitlines()[-1])
  assert len(dims) == 3 and names > 0
  ir, vi = (REPO / "demo_data" / "tno" / kind / "07.png" for kind in ("ir", "vi"))
  proc = subprocess.run([sys.executable, "-m", "s4fusion_jax", "fuse", "--ir", str(ir), "--vi",
                         str(vi), "--out", "fused.png", "--method", "max"], cwd=work, env=env,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (work / "fused.png").stat().st_size > 0
