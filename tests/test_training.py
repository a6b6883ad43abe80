"""The training job: data parallelism, kill-and-resume, learning, schedule, failures."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import train_config
from conftest import REPO, TRAIN_FLAGS, run, subprocess_env
from configs import bundled
from configs import smoke
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.training import build
from s4fusion_jax.training import run_log
from s4fusion_jax.training import train_step
from s4fusion_jax.training import trainer


def test_eight_devices_match_one(tmp_path):
  results = {}
  for devices in (1, 8):
    out = tmp_path / f"dp{devices}.npz"
    proc = run(["tests/dp_step.py", str(out)],
               env={"JAX_NUM_CPU_DEVICES": str(devices)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results[devices] = np.load(out)
  one, eight = results[1], results[8]
  assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
  assert eight["collectives"].tolist() == [0, 0]  # (inside loops, other than all-reduce)
  names = [k for k in one.files if k not in ("devices", "loss", "collectives")]
  assert len(names) > 50
  for name in names:
    np.testing.assert_allclose(eight[name], one[name], rtol=0, atol=1e-5, err_msg=name)
  assert not np.array_equal(one[names[0]], initial_params()[names[0]])  # it trained


def initial_params():
  config = train_config.two_scales(train_config.get_config())  # as dp_step.py
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in nnx.traversals.flatten_mapping(build.build(config).state.params).items()}


def final_params(workdir, step):
  model = checkpoint.load_model(os.path.join(workdir, "checkpoints", str(step)))
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def tensorboard_events(workdir):
  """(scalars {tag: [(step, value)]}, images {tag: [(step, (height, width))]}) of a run's
  events, as TensorBoard's own reader (EventAccumulator, purging orphaned data) reads them."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  reader = event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0,
                                                   event_accumulator.IMAGES: 0})
  reader.Reload()
  scalars = {tag: [(e.step, e.value) for e in reader.Scalars(tag)]
             for tag in reader.Tags()["scalars"]}
  images = {tag: [(e.step, (e.height, e.width)) for e in reader.Images(tag)]
            for tag in reader.Tags()["images"]}
  return scalars, images


def assert_events_hold_the_log(workdir):
  """Every scalar of metrics.jsonl is in the TensorBoard events at the same steps, once."""
  logged = {}
  for record in map(json.loads, open(workdir / "metrics.jsonl")):
    for name, value in record.items():
      if name != "step":
        logged.setdefault(name, []).append((record["step"], np.float32(value)))
  scalars, images = tensorboard_events(workdir)
  assert sorted(scalars) == sorted(logged)
  for name, points in logged.items():
    assert [(step, np.float32(value)) for step, value in scalars[name]] == points, name
  return images


def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path, smoke_run):
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "train.py", f"--workdir={killed}", *TRAIN_FLAGS],
                          cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (killed / "checkpoints" / "6").exists() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / "checkpoints" / "6").exists(), "the run never reached step 6"
  assert not (killed / "checkpoints" / "12").exists(), "the run finished before it was killed"
  resumed = run(["train.py", f"--workdir={killed}", *TRAIN_FLAGS])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step" in resumed.stdout
  assert re.search(r"^train step ready in \d+\.\d s ", resumed.stdout, re.M), resumed.stdout
  for a, b in zip(final_params(smoke_run, 12), final_params(killed, 12)):
    np.testing.assert_array_equal(a, b)
  # The steps logged before the kill past its last checkpoint are not logged twice.
  losses = lambda workdir: [(r["step"], r["loss"]) for r in map(json.loads, open(
      workdir / "metrics.jsonl"))]
  assert losses(killed) == losses(smoke_run)
  # And TensorBoard's reader sees each logged step once, with metrics.jsonl's values, in the
  # run that was killed (two event files, the second purging past step 6) as in the other.
  assert len(os.listdir(killed / "tensorboard")) == 2
  for workdir in (killed, smoke_run):
    assert_events_hold_the_log(workdir)
  assert tensorboard_events(killed)[0]["loss"] == tensorboard_events(smoke_run)[0]["loss"]


def test_training_lowers_the_loss_and_validates(tmp_path):
  """30 steps of the tests' config (its train step is the smoke run's, from the tests' compile
  cache) and a validation at the end."""
  proc = run(["train.py", f"--workdir={tmp_path}", *TRAIN_FLAGS, "--config.num_steps=30",
              "--config.log_every=5", "--config.checkpoint_every=30", "--config.eval_every=30",
              "--config.eval_pairs=1", "--config.eval_size=61"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 6
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
  assert all(math.isfinite(r["grad_norm"]) and r["images_per_s"] > 0 for r in records if "loss" in r)
  assert any("val/Qabf" in r for r in records)
  assert (tmp_path / "samples" / "step_000030.png").exists()
  images = assert_events_hold_the_log(tmp_path)  # val/* and the training scalars
  height, width = Image.open(tmp_path / "samples" / "step_000030.png").size[::-1]
  assert images == {"val/samples": [(30, (height, width))]}
  best = json.load(open(tmp_path / "best.json"))
  assert best["step"] == 30 and os.path.isdir(best["path"])


def test_a_nan_loss_stops_the_run_naming_the_step_and_term(tmp_path):
  proc = run(["train.py", f"--workdir={tmp_path}", *TRAIN_FLAGS,
              "--config.loss.weights.loss_l1=nan"])
  assert proc.returncode == 2
  assert re.search(r"non-finite .*\bloss\b.* at step 1;", proc.stderr), proc.stderr[-500:]
  assert not (tmp_path / "checkpoints" / "1").exists()


def test_deferred_metrics_name_the_first_bad_step():
  pending = [(5, {"loss": jnp.float32(1.0), "loss_l1": jnp.float32(0.5)}),
             (6, {"loss": jnp.float32(np.inf), "loss_l1": jnp.float32(np.nan)}),
             (7, {"loss": jnp.float32(np.nan), "loss_l1": jnp.float32(np.nan)})]
  with pytest.raises(trainer.NonFiniteLoss, match=r"non-finite loss, loss_l1 at step 6;"):
    trainer._fetch_checked(pending)  # pylint: disable=protected-access
  fetched = trainer._fetch_checked(pending[:1])  # pylint: disable=protected-access
  assert fetched == [{"loss": 1.0, "loss_l1": 0.5}]


def test_batch_must_split_over_devices_and_micro_batches():
  mesh = build.make_mesh()
  build.check_batch(8, mesh, microbatches=4)
  with pytest.raises(ValueError, match="does not split into 3 micro-batches"):
    build.check_batch(8, mesh, microbatches=3)


def test_micro_batches_give_the_whole_batch_gradient():
  config = train_config.two_scales(train_config.get_config())
  rng = np.random.default_rng(0)
  batch = {k: rng.random((4, 37, 37, 1), np.float32) for k in ("ir", "vi")}
  outs = []
  for k in (1, 2):
    config.microbatches = k
    run = build.build(config)
    outs.append(run.train_step(run.state, batch, None))
  for name in ("loss", "grad_norm", "loss_l1"):
    np.testing.assert_allclose(outs[0][1][name], outs[1][1][name], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(outs[0][0].params), jax.tree.leaves(outs[1][0].params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_schedule_is_the_reference_warmup_cosine():
  schedule = train_step.warmup_cosine(3e-4, 1.5e-3, 6e-4, warmup_steps=10, total_steps=110)
  reference = []
  for k in range(1, 111):  # the reference's WarmupCosineSchedule.step(), k = 1, 2, ...
    if k < 10:
      reference.append(3e-4 + k / 10 * (1.5e-3 - 3e-4))
    else:
      progress = (k - 10) / 100
      reference.append(max(6e-4, 6e-4 + (1.5e-3 - 6e-4) * 0.5 * (1 + math.cos(math.pi * progress))))
  np.testing.assert_allclose([schedule(c) for c in range(110)], reference, rtol=1e-6)


def test_init_from_a_converted_reference_checkpoint(tmp_path, tiny_golden):
  from conftest import reference_state_dict  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.interop import reference  # pylint: disable=import-outside-toplevel
  converted = reference.from_torch_state_dict(reference_state_dict(tiny_golden))
  checkpoint.save_model(tmp_path / "ref", converted)
  config = smoke.get_config()  # the tiny fixture's sizes
  ours = jax.tree.leaves(build.build(config, init_from=str(tmp_path / "ref")).state.params)
  theirs = jax.tree.leaves(nnx.to_pure_dict(nnx.state(converted, nnx.Param)))
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)
  config.model.d_state = 5
  with pytest.raises(ValueError, match="other sizes"):
    build.initial_model(config, init_from=str(tmp_path / "ref"))


def test_the_log_forgets_steps_past_the_resumed_checkpoint(tmp_path):
  log = run_log.JsonLog(tmp_path)
  for step in (1, 2, 3, 4):
    log.write({"step": step, "loss": float(step)})
  with open(log.path, "a") as f:
    f.write('{"step": 5, "lo')  # a kill in the middle of a write
  log.drop_after(2)
  assert [json.loads(line)["step"] for line in open(log.path)] == [1, 2]
  log.write({"step": 3, "loss": 0.5})
  assert [json.loads(line)["step"] for line in open(log.path)] == [1, 2, 3]


@pytest.mark.parametrize("name,arg", [("default", None), ("smoke", None),
                                      *(("bundled", stage) for stage in bundled.STAGES)])
def test_every_shipped_config_builds(name, arg):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  config = module.get_config() if arg is None else module.get_config(arg)
  build.train_model_config(config)
  train_step.make_optimizer(config)
  assert config.num_steps > 0 and config.batch_size % config.microbatches == 0


def test_bundled_config_names_its_stages():
  with pytest.raises(ValueError, match=r"stage must be one of \('1', '2', '3', '4', '5', '6'\)"):
    bundled.get_config("7")


@pytest.mark.parametrize("stage", ["4", "5", "6"])
def test_bundled_stages_4_to_6_validate_on_pairs_they_do_not_train_on(stage):
  config = bundled.get_config(stage)
  (train,), val = config.data.train, config.data.val
  assert (train["split"], val["split"]) == ("train", "validation")
  assert train["validation"] == val["validation"] and train["name"] == val["name"]
  assert "tno" not in (val["dataset"] + val["manual_dir"]).lower()
