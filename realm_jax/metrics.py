"""Metrics to TensorBoard (WORKDIR/logs) and the console; process 0 only."""
from collections.abc import Mapping
import json
import math

from absl import logging
from etils import epath
import jax
import numpy as np
import tensorboardX


class MetricWriter:
  """Writes scalars to TensorBoard events and a JSON-lines file."""

  def __init__(self, logdir: epath.PathLike):
    self._enabled = jax.process_index() == 0
    if self._enabled:
      logdir = epath.Path(logdir)
      logdir.mkdir(parents=True, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(str(logdir))
      self._jsonl = (logdir / 'metrics.jsonl').open('a')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    bad = [k for k, v in scalars.items() if not math.isfinite(v)]
    if bad:  # fail loudly, as big_vision does, rather than train on NaNs
      raise RuntimeError(f'step {step}: non-finite metrics {bad}: {scalars}')
    if not self._enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps(dict(step=step, **scalars)) + '\n')
    self.flush()  # a killed trainer keeps every line it logged
    logging.info('step %d: %s', step, ', '.join(
        f'{k}={v:.4g}' for k, v in sorted(scalars.items())))

  def flush(self) -> None:
    if self._enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
      self._jsonl.close()
