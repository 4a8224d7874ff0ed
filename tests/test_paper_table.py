"""bench/paper_table.py: the paper-table driver, every row at toy size."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from realm_jax import corpus as corpus_lib
import paper_table  # bench/paper_table.py
import retrieval_eval  # bench/retrieval_eval.py


def test_standard_errors_and_paired_differences():
  mean, se = paper_table._mean_se('1100')
  assert mean == 0.5
  assert se == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
  rng = np.random.default_rng(1)
  a = rng.random(400) < 0.6
  b = a & (rng.random(400) < 0.8)  # b is a with some hits removed: paired
  diff, se = paper_table._paired_difference(
      paper_table._bits(a), paper_table._bits(b), np.random.default_rng(0))
  assert diff == pytest.approx(a.mean() - b.mean())
  # The bootstrap SE is the analytic paired one (not the unpaired, larger).
  paired = np.std(a.astype(float) - b, ddof=1) / np.sqrt(400)
  unpaired = np.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
  assert se == pytest.approx(paired, rel=0.1)
  assert paired < 0.6 * unpaired


@pytest.mark.slow
def test_quick_table_runs_every_row_and_resumes(shared_data, tmp_path):
  workdir = tmp_path / 'table'
  # The REALM stages with a variant's flags (the relative null document;
  # one the driver sets too, which the variant's overrides).
  realm_flags = ('--config.null_document=relative '
                 '--config.index.fresh_eval=false')
  command = [sys.executable, str(REPO_ROOT / 'bench' / 'paper_table.py'),
             '--quick', f'--data={shared_data}', f'--workdir={workdir}',
             f'--realm-flags={realm_flags}']
  # One CPU device, as on a laptop (the suite's 8 fake ones would need
  # batches of 8).
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  run = lambda *extra: subprocess.run(
      command + list(extra), cwd=REPO_ROOT, capture_output=True, text=True,
      check=False, env=env)
  # --zero-shot-only: every row with a retriever of its own, no fine-tuning.
  partial = run('--zero-shot-only')
  assert partial.returncode == 0, (partial.stdout[-3000:] +
                                   partial.stderr[-3000:])
  zero_shot = json.loads((workdir / 'paper_table.json').read_text())['rows']
  assert set(zero_shot) == {name for name, (retriever, _) in
                            paper_table.ROWS.items() if retriever}
  assert not any('em' in r['splits']['heldout'] for r in zero_shot.values())
  assert not list(workdir.glob('ft_*'))
  assert all(r['realm_flags'] == realm_flags for r in zero_shot.values())
  realm_config = json.loads((workdir / 'realm' / 'config.json').read_text())
  assert realm_config['null_document'] == 'relative'
  assert realm_config['index']['fresh_eval'] is False
  assert '| not run |' in (workdir / 'paper_table.md').read_text()

  # The full run adds the fine-tuning, reusing the measured zero-shot parts.
  first = run()
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  results = json.loads((workdir / 'paper_table.json').read_text())
  assert set(results['rows']) == set(paper_table.ROWS)
  assert all(r['realm_flags'] == realm_flags
             for r in results['rows'].values())
  for name, row in zero_shot.items():
    assert results['rows'][name]['zero_shot_seconds'] == row[
        'zero_shot_seconds']
    assert results['rows'][name]['splits']['heldout'][
        'zero_shot_recall@5'] == row['splits']['heldout']['zero_shot_recall@5']
  ran = [l.split()[-1] for l in first.stdout.splitlines() if ' stage ' in l]
  assert ran and all(s.startswith('ft_') for s in ran), ran

  read = lambda name: [json.loads(l) for l in (
      workdir / 'data' / f'{name}.jsonl').read_text().splitlines()]
  heldout, finetune = read('heldout'), read('finetune')
  assert heldout and finetune
  assert all(q['article_idx'] % 5 == 2 for q in heldout)
  assert not {q['article_idx'] for q in heldout} & {
      q['article_idx'] for q in finetune}
  assert all(q['article_idx'] % 5 != 2 for q in read('dev_seen'))

  for name, (retriever, finetuned) in paper_table.ROWS.items():
    cells = results['rows'][name]['splits']['heldout']
    if retriever:
      assert len(cells['zero_shot_recall@5']) == len(heldout)
    if finetuned:
      assert len(cells['em']) == len(heldout)
      metrics = json.loads((workdir / f'ft_{name}' / 'eval' /
                            'heldout_metrics.json').read_text())
      assert paper_table._mean_se(cells['em'])[0] == pytest.approx(
          metrics['exact_match'])
      if not finetuned[2]:  # closed book retrieves nothing
        assert paper_table._mean_se(cells['recall@5'])[0] == pytest.approx(
            metrics['gold_paragraph_recall@5'])
  # BM25's cell: the recall of BM25's top 5 over the same corpus.
  corpus = corpus_lib.Corpus(workdir / 'corpus' / 'corpus')
  bm25 = retrieval_eval.recall_at_k(retrieval_eval.bm25_retrieve(
      corpus, [q['question'] for q in heldout], 5), corpus, heldout, (5,))
  assert paper_table._mean_se(results['rows']['bm25']['splits']['heldout'][
      'zero_shot_recall@5'])[0] == pytest.approx(bm25['recall@5'])

  table = (workdir / 'paper_table.md').read_text()
  for title in paper_table.TITLES.values():
    assert f'| {title} |' in table
  for title, *_ in paper_table.ORDERINGS:
    assert f'| {title} |' in table

  # A rerun runs nothing (every row is in the results) and rebuilds the
  # same table; --table alone rebuilds it from the results file.
  stages = (workdir / 'stage_seconds.json').read_text()
  again = run()
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'stage ' not in again.stdout
  assert (workdir / 'stage_seconds.json').read_text() == stages
  assert (workdir / 'paper_table.md').read_text() == table
  (workdir / 'paper_table.md').unlink()
  assert run('--table').returncode == 0
  assert (workdir / 'paper_table.md').read_text() == table
