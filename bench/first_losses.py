"""The first losses of every trainer on fixed seeds: a behaviour check.

  .venv/bin/python bench/first_losses.py --out=/tmp/before.json
  ... change the code ...
  .venv/bin/python bench/first_losses.py --compare=/tmp/before.json

Runs the real entry points (so it works across refactors that move modules)
on a small synthetic corpus: realm-ict, realm-pretrain beside
realm-index-builder (its index comes from step 0, the only checkpoint before
the last step, so every step searches the same index), realm-finetune and
realm-mlm when it exists, each for 5 steps with a tiny model, and prints the
loss of every step. With --compare, prints each loss's relative difference
from the saved run and exits 1 if any exceeds --rtol (default 1e-6).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
STEPS = 5
MODEL = ['--config.model.num_layers=1', '--config.model.hidden_size=32',
         '--config.model.num_heads=2', '--config.model.intermediate_size=64',
         '--config.model.projection_size=16', '--config.model.vocab_size=1000']
COMMON = [f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
          '--config.checkpoint.every_steps=100', *MODEL]


def _run(args, log):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with open(log, 'w') as f:
    subprocess.run(args, check=True, env=env, stdout=f,
                   stderr=subprocess.STDOUT, cwd=REPO)


def _losses(workdir, job):
  path = workdir / 'logs' / job / 'metrics.jsonl'
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [r['loss'] for r in rows if 'loss' in r][:STEPS]


def run_all(root: pathlib.Path) -> dict[str, list[float]]:
  ict, realm, ft = root / 'ict', root / 'realm', root / 'ft'
  _run([BIN / 'realm-prepare-corpus', f'--config={REPO}/configs/'
        'prepare_corpus.py:tiny', f'--workdir={ict}',
        '--config.input.synthetic_docs=150',
        '--config.tokenizer.vocab_size=1000'], root / 'corpus.log')
  _run([BIN / 'realm-ict', f'--config={REPO}/configs/ict.py:tiny',
        f'--workdir={ict}', '--config.batch_size=8', *COMMON],
       root / 'ict.log')
  results = dict(ict=_losses(ict, 'ict'))

  realm.mkdir()
  builder = subprocess.Popen(
      [BIN / 'realm-index-builder',
       f'--config={REPO}/configs/index_builder.py:tiny', f'--workdir={realm}',
       f'--config.corpus_dir={ict}/corpus', '--config.poll_seconds=0.2',
       '--config.embed_batch_size=16', '--config.chunk_blocks=64'],
      env=dict(os.environ, JAX_PLATFORMS='cpu'), cwd=REPO,
      stdout=open(root / 'builder.log', 'w'), stderr=subprocess.STDOUT)
  try:
    _run([BIN / 'realm-pretrain', f'--config={REPO}/configs/pretrain.py:tiny',
          f'--workdir={realm}', f'--config.corpus_dir={ict}/corpus',
          f'--config.init_from={ict}', '--config.batch_size=4',
          '--config.lengths.joint_len=128', '--config.index.poll_seconds=0.2',
          *COMMON], root / 'pretrain.log')
  finally:
    builder.wait(timeout=300)
  results['pretrain'] = _losses(realm, 'pretrain')

  records = [json.loads(line) for line in
             (ict / 'corpus').glob('*.jsonl').__next__().read_text()
             .splitlines()[:24]]
  train = root / 'train.jsonl'
  train.write_text(''.join(json.dumps(dict(
      question=f'What about {r["title"]}?', answer=[r['text'].split()[2]]))
                           + '\n' for r in records))
  _run([BIN / 'realm-finetune', f'--config={REPO}/configs/finetune.py:tiny',
        f'--workdir={ft}', f'--config.init_from={realm}',
        f'--config.train_data={train}', '--config.lengths.reader_len=96',
        '--config.retriever_beam_size=16', '--config.reader_beam_size=2',
        '--config.batch_size=4', *COMMON], root / 'finetune.log')
  results['finetune'] = _losses(ft, 'finetune')
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', help='save the losses here (JSON)')
  parser.add_argument('--compare', help='a JSON file saved with --out')
  parser.add_argument('--rtol', type=float, default=1e-6)
  parser.add_argument('--workdir', help='default: a temporary folder')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.workdir or tmp)
    root.mkdir(parents=True, exist_ok=True)
    results = run_all(root)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
  before = json.loads(pathlib.Path(args.compare).read_text()) if (
      args.compare) else {}
  worst = 0.0
  print(f'{"job":10s} {"step":>4s} {"loss":>14s} {"saved":>14s} {"rel diff":>9s}')
  for job, losses in results.items():
    for step, loss in enumerate(losses, start=1):
      saved = before.get(job, [None] * STEPS)[step - 1]
      diff = '' if saved is None else abs(loss - saved) / abs(saved)
      worst = max(worst, diff or 0.0)
      print(f'{job:10s} {step:4d} {loss:14.8f} '
            f'{"" if saved is None else f"{saved:14.8f}":>14s} '
            f'{"" if diff == "" else f"{diff:9.2e}":>9s}')
  if args.compare:
    print(f'largest relative difference {worst:.2e} (rtol {args.rtol})')
    if worst > args.rtol:
      raise SystemExit(1)


if __name__ == '__main__':
  main()
