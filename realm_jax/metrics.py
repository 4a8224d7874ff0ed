"""Metrics to TensorBoard (WORKDIR/logs), metrics.jsonl and the console;
process 0 only."""
from collections.abc import Mapping
import json
import math

from etils import epath
import jax
import numpy as np
import tensorboardX
import tqdm

from realm_jax import corpus as corpus_lib

# The first metrics of the console line, in this order; the rest follow
# sorted by name.
_CONSOLE_FIRST = ('loss',)


def console_line(step: int, scalars: Mapping[str, float],
                 num_steps: int | None = None) -> str:
  """`step 50/300 | loss 3.21 | accuracy 0.45 ... | 2.1 steps/s, host 30%,
  ETA 1m23s`: one readable line per log step."""
  timing = {k: v for k, v in scalars.items() if k.startswith('time/')}
  rest = {k: v for k, v in scalars.items() if k not in timing}
  names = [k for k in _CONSOLE_FIRST if k in rest] + sorted(
      k for k in rest if k not in _CONSOLE_FIRST)
  parts = [f'step {step}' + (f'/{num_steps}' if num_steps else '')]
  parts += [f'{k} {rest[k]:.4g}' for k in names]
  if timing:
    step_ms = timing['time/host_ms'] + timing['time/device_ms']
    parts.append(f'{timing["time/steps_per_s"]:.3g} steps/s, host '
                 f'{timing["time/host_ms"] / max(step_ms, 1e-9):.0%}, ETA '
                 f'{_duration(timing["time/eta_s"])}')
  return ' | '.join(parts)


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class _RewrittenObject:
  """An appendable text file on a bucket, where objects cannot be appended
  to (gcsfs turns mode 'a' into 'w'; a half-written object is not there):
  it keeps the whole text, starting from the object's current one, and
  rewrites the object at every flush. An upload replaces the object whole,
  so a reader sees the last flushed text, never a cut line."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._text = [path.read_text()] if path.exists() else []
    self._flushed = True

  def write(self, text: str) -> None:
    self._text.append(text)
    self._flushed = False

  def flush(self) -> None:
    if not self._flushed:
      self._text = [''.join(self._text)]
      self._path.write_text(self._text[0])
      self._flushed = True

  def close(self) -> None:
    self.flush()


class MetricWriter:
  """Writes scalars to TensorBoard events, a JSON-lines file and, one line
  per call, the console (above any progress bar).

  A restarted job appends to its metrics.jsonl; on a bucket (gs://) the
  object is rewritten whole at every write, as tensorboardX does for its
  event files there.
  """

  def __init__(self, logdir: epath.PathLike, num_steps: int | None = None):
    self._enabled = jax.process_index() == 0
    self._num_steps = num_steps
    self.logdir = epath.Path(logdir)
    if self._enabled:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(str(self.logdir))
      jsonl = self.logdir / 'metrics.jsonl'
      self._jsonl = (_RewrittenObject(jsonl) if corpus_lib.is_remote(self.logdir)
                     else jsonl.open('a'))

  def write(self, step: int, scalars: Mapping[str, float],
            console: bool = True) -> None:
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
    if console:
      tqdm.tqdm.write(console_line(step, scalars, self._num_steps))

  def write_text(self, name: str, text: str) -> None:
    """A text file beside the metrics (e.g. the parameter table)."""
    if self._enabled:
      (self.logdir / name).write_text(text + '\n')

  def flush(self) -> None:
    if self._enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
      self._jsonl.close()
