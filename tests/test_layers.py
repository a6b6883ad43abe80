"""The package's layers: no module imports from a higher layer, no import cycles, and the
public API at the top, imported lazily."""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "s4fusion_jax"
# Bottom to top (docs/design.md). evaluation is above training: the ablation study trains.
LAYERS = {"runtime": 0, "numerics": 1, "network": 2, "objectives": 3, "interop": 4, "data": 5,
          "training": 6, "evaluation": 7}
TOP = 8  # s4fusion_jax/__init__.py and __main__.py: the public API and the command line


def modules():
  """{dotted name: path} of every module of the package."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return found


def layer(name):
  parts = name.split(".")
  return LAYERS[parts[1]] if len(parts) > 2 or parts[1] in LAYERS else TOP


def imports(path, known):
  """The package modules ``path`` imports, inside functions too."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("s4fusion_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if candidate in known else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("s4fusion_jax"))
  return found


def test_every_module_sits_in_a_layer():
  names = modules()
  assert len(names) > 40
  for name in names:
    parts = name.split(".")
    assert len(parts) <= 3, f"{name}: one level of subpackages"
    if len(parts) == 3 or (len(parts) == 2 and parts[1] not in ("__main__",)):
      assert parts[1] in LAYERS, f"{name} is in no layer of {sorted(LAYERS)}"


def test_no_module_imports_from_a_higher_layer():
  names = modules()
  upward = []
  for name, path in names.items():
    for target in imports(path, names):
      assert target in names, f"{name} imports {target}, which does not exist"
      if layer(target) > layer(name):
        upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
  assert not upward, "\n".join(upward)


def test_a_module_that_imports_from_a_higher_layer_is_caught(tmp_path):
  names = modules()
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from s4fusion_jax.training import trainer\n")
  assert imports(bad, names) == {"s4fusion_jax.training.trainer"}
  assert layer("s4fusion_jax.training.trainer") > layer("s4fusion_jax.network.model")


def test_no_import_cycles():
  names = modules()
  graph = {name: imports(path, names) - {name} for name, path in names.items()}
  state = {}

  def visit(node, trail):
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", "import cycle: " + " -> ".join(trail + [node])
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      visit(target, trail + [node])
    state[node] = "done"

  for name in names:
    visit(name, [])


def test_the_public_api_is_at_the_top_and_lazy():
  script = ("import sys, s4fusion_jax; assert 'jax' not in sys.modules, 'import pulled in jax'; "
            "from s4fusion_jax import S4Fusion, ModelConfig, create, fuse, load_model, Fuser, "
            "functional; from s4fusion_jax.network import model; "
            "assert S4Fusion is model.S4Fusion and fuse is model.fuse; "
            "assert functional.Network.__module__ == 's4fusion_jax.interop.functional'; print('ok')")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
