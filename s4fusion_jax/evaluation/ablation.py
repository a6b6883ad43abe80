"""The ablation job: train the paper's Table 3 variants alike, evaluate each, tabulate.

``WORKDIR/VARIANT/`` holds one variant's (resumable) training run, then ``eval/`` and
``result.json``; a variant with a ``result.json`` is not run again.
``WORKDIR/ablation.md``, ``ablation.csv`` and ``ablation.png`` (a bar chart) hold every
finished variant. Every variant shares the data order, seed, steps and loss; only
``no_per`` differs, by training without L_per.
"""

import json
import os

from s4fusion_jax.evaluation import charts
from s4fusion_jax.evaluation import evaluator
from s4fusion_jax.evaluation import inference
from s4fusion_jax.evaluation import result_tables
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.objectives import metrics
from s4fusion_jax.runtime import atomic_files
from s4fusion_jax.training import trainer

# Without ResNet50 weights L_per is off for every variant, so "no_per" is "s4fusion".
SAME_WITHOUT_PER = ("no_per", "s4fusion")


def short_budget(config, train_dir, workdir, *, steps, batch_size, crop_size,
                 resnet_weights=None):
  """Sets ``config`` up for a short ablation run on the pairs of ``train_dir`` (ir/, vi/).

  Without ``resnet_weights`` the source weights come from the images' Sobel energy and L_per
  is off. Validation is off: the test folder is measured after training.
  """
  config.data.data_dir = os.path.join(workdir, "tfds")
  config.data.train = [dict(dataset="paired_folder", manual_dir=os.path.abspath(train_dir),
                            name=os.path.basename(os.path.normpath(train_dir)), split="train",
                            weight=None)]
  config.data.num_workers = 0
  if resnet_weights:
    config.loss.resnet_weights = resnet_weights
  else:
    config.loss.update(perceptual=False, weight_source="image_gradient")
  config.model.remat = False
  config.batch_size, config.crop_size, config.num_steps = batch_size, crop_size, steps
  config.optimizer.warmup_steps = max(1, steps // 10)
  config.log_every = max(1, min(config.log_every, steps))
  config.checkpoint_every = max(config.log_every, steps // 4 // config.log_every * config.log_every)
  config.eval_every = 0
  return config


def train_seconds(run_dir, batch_size):
  """The training time a run logged: each logged interval's steps x batch / images_per_s.

  It counts compilation (in the first interval) and excludes checkpoint writes.
  """
  steps, rates = charts.read_log(run_dir)["images_per_s"]
  return sum((b - a) * batch_size / r for a, b, r in zip([0, *steps], steps, rates))


def run_variant(name, config, test_dir, workdir, progress=True):
  """Trains (or resumes) one variant, evaluates it on ``test_dir``; returns its result dict."""
  run_dir = os.path.join(workdir, name)
  result_path = os.path.join(run_dir, "result.json")
  if os.path.isfile(result_path):
    with open(result_path) as f:
      return json.load(f)
  trainer.train_and_evaluate(config, run_dir, progress=progress)
  final = os.path.join(run_dir, "checkpoints", str(config.num_steps))
  model = checkpoint.load_model(final)
  mean = evaluator.evaluate(inference.Fuser(model=model), test_dir, os.path.join(run_dir, "eval"),
                            progress=progress)
  result = {"variant": name, "params": model_lib.count_params(model), "steps": config.num_steps,
            "train_seconds": train_seconds(run_dir, config.batch_size),
            **{k: mean[k] for k in metrics.ABLATION_COLUMNS}}
  atomic_files.write_text(result_path, json.dumps(result, indent=1))
  return result


def write_table(results, notes, out):
  """Writes ablation.{md,csv} into ``out`` (returns the markdown): per variant of ``results``
  ({variant: result dict}) the six metrics (the best in bold), parameters, train time; a
  variant of ``notes`` ({variant: note}) shows its note."""
  columns = metrics.ABLATION_COLUMNS
  best = {k: max(r[k] for r in results.values()) for k in columns}
  head = ["variant", *columns, "params", "steps", "train s"]
  rows = [[name, *(r[k] for k in columns), r["params"], r["steps"], r["train_seconds"]]
          for name, r in results.items()]

  def shown(column, value):
    if column in columns:
      return f"**{value:.3f}**" if value == best[column] else f"{value:.3f}"
    if column == "variant":
      return f"{value} ({notes[value]})" if value in notes else value
    return {"params": f"{value:,}", "train s": f"{value:.0f}"}.get(column, str(value))

  return result_tables.write(out, "ablation", head, rows, shown)


def run(configs, test_dir, workdir, *, with_perceptual, progress=True):
  """Runs every variant of ``configs`` ({name: training config}) and writes the table.

  Without ``with_perceptual`` (no ResNet50 weights) ``no_per`` is not trained: it is
  ``s4fusion``, and its row says so. Returns the markdown table.
  """
  os.makedirs(workdir, exist_ok=True)
  same, twin = SAME_WITHOUT_PER
  names = list(configs)
  notes = {}
  if not with_perceptual and same in names:
    print(f"without ResNet50 weights L_per is off for every variant: '{same}' is '{twin}', "
          f"so only '{twin}' is trained")
    notes[same] = f"= {twin}: L_per needs ResNet50 weights"
    if twin not in names:  # without L_per the two configs are the same
      names.insert(names.index(same), twin)
      configs = {**configs, twin: configs[same]}
  results = {}
  for name in names:
    if name == same and same in notes:
      continue
    print(f"== {name}")
    results[name] = run_variant(name, configs[name], test_dir, workdir, progress)
  if same in notes:
    results = {n: results[twin] if n == same else results[n] for n in names}
  md = write_table(results, notes, workdir)
  charts.save(charts.bars_figure({n: {k: r[k] for k in metrics.ABLATION_COLUMNS}
                                  for n, r in results.items()},
                                 "ablation variants on the test pairs"),
              os.path.join(workdir, "ablation.png"))
  return md
