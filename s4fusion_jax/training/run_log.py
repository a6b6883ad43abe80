"""What a training run records as it goes: WORKDIR/metrics.jsonl and TensorBoard events.

    tensorboard --logdir WORKDIR/tensorboard

Both get the same records at the same steps: every logged scalar (the loss and its terms,
the learning rate, the gradient, parameter and update norms, images/s) and the validation
metrics (``val/<metric>``); TensorBoard also gets the sample grid (``val/samples``). Process
0 alone writes, with tensorboardX, flushing at every logged step.

Resuming from step s drops later records from metrics.jsonl and starts the new event file
with TensorBoard's purge marker (``SessionLog.START``) at s + 1: no step appears twice.
"""

import json
import os
import time

import jax

from s4fusion_jax.runtime import atomic_files

TENSORBOARD_DIR = "tensorboard"


class JsonLog:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record):
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def drop_after(self, step):
    """Forgets the records of steps after ``step``, which a resumed run logs again.

    A line cut short by a kill is dropped too. The file is replaced atomically.
    """
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["step"] <= step:
          kept.append(line)
    atomic_files.write_text(self.path, "".join(kept))


class RunLog:
  """metrics.jsonl and TensorBoard events of a run that starts (or resumes) at ``step``.

  The events are written synchronously (tensorboardX's ``EventsWriter``): after ``write``
  returns, the step is on disk.
  """

  def __init__(self, workdir, step):
    self.writer = jax.process_index() == 0
    self.json = JsonLog(workdir)
    self.events = None
    if not self.writer:
      return
    self.json.drop_after(step)
    # Imported here: only process 0 of a training run needs them.
    from tensorboardX import event_file_writer, summary  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    self._summary, self._event_pb2 = summary, event_pb2
    folder = os.path.join(workdir, TENSORBOARD_DIR)
    os.makedirs(folder, exist_ok=True)
    self.events = event_file_writer.EventsWriter(os.path.join(folder, "events"),
                                                 filename_suffix=f".{os.getpid()}")
    self.events.write_event(event_pb2.Event(
        wall_time=time.time(), step=step + 1,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self.events.flush()

  def write(self, record, image=None):
    """Logs ``record`` ({"step": s, name: number, ...}) and, if given, the validation grid
    ``image`` (uint8 (H, W, 3)); the events are on disk when it returns."""
    if not self.writer:
      return
    self.json.write(record)
    summary, event_pb2 = self._summary, self._event_pb2
    step = record["step"]
    summaries = [summary.scalar(name, value) for name, value in record.items() if name != "step"]
    if image is not None:
      summaries.append(summary.image("val/samples", image, dataformats="HWC"))
    for one in summaries:
      self.events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=one))
    self.events.flush()

  def close(self):
    if self.events is not None:
      self.events.close()
