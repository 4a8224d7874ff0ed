"""The learning bed's summary (launch/realm_bed.sh): what each stage learnt.

  python launch/bed_summary.py WORKDIR RUN

Reads the metrics.jsonl files of WORKDIR/{mlm,ict,RUN}; every mean is
given with its standard error over steps.
"""
import json
import math
import pathlib
import sys


def _rows(path: pathlib.Path, key: str) -> list[dict]:
  return [r for r in map(json.loads, path.read_text().splitlines())
          if key in r]


def _mean_se(values: list[float]) -> str:
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
  return f'{mean:.3f} +- {math.sqrt(var / n):.3f}'


def main(workdir: pathlib.Path, run: str) -> None:
  manifest = json.loads((workdir / 'corpus/manifest.json').read_text())
  print(f"corpus: {manifest['num_blocks']} blocks from "
        f"{manifest['num_documents']} documents")
  mlm = _rows(workdir / 'mlm/logs/mlm/metrics.jsonl', 'eval/copy_accuracy')
  first, last = mlm[0], mlm[-1]
  print(f"reader (realm-mlm, linked pairs), held-out salient spans, step "
        f"{first['step']} -> {last['step']}: beside a block that states the "
        f"span {first['eval/copy_accuracy']:.3f} -> "
        f"{last['eval/copy_accuracy']:.3f}; beside the null document "
        f"{last['eval/copy_null_accuracy']:.3f}; masked-LM accuracy "
        f"{last['eval/mlm_accuracy']:.3f} vs the most frequent piece "
        f"{last['eval/unigram_accuracy']:.3f}")
  ict = _rows(workdir / 'ict/logs/ict/metrics.jsonl', 'loss')
  print(f"ICT: step {ict[0]['step']} loss {ict[0]['loss']:.3f} -> step "
        f"{ict[-1]['step']} loss {ict[-1]['loss']:.3f} (in-batch accuracy "
        f"{ict[-1]['accuracy']:.3f})")
  path = workdir / run / 'logs/pretrain/metrics.jsonl'
  train = _rows(path, 'retrieval_utility')
  evals = _rows(path, 'eval/fact_recall')
  print(f'REALM ({run}), held-out queries (sentences of blocks no training '
        'query came from): a retrieved block states the masked fact')
  print('  ' + ', '.join(f"step {r['step']} {r['eval/fact_recall']:.3f}"
                         for r in evals))
  keys = ('retrieval_utility', 'mlm_accuracy', 'null_mlm_accuracy',
          'fact_recall', 'source_recall', 'retrieval_entropy')
  print('training batches, mean +- SE over steps:')
  print('| steps | ' + ' | '.join(keys) + ' |')
  print('|---' * (len(keys) + 1) + '|')
  for begin in range(0, len(train), 100):
    part = train[begin:begin + 100]
    print(f"| {part[0]['step']}-{part[-1]['step']} | " + ' | '.join(
        _mean_se([r[k] for r in part]) for k in keys) + ' |')
  steps = sorted({int(r['index_step']) for r in train})
  print(f'index versions used: {len(steps)}; max staleness '
        f"{int(max(r['index_staleness'] for r in train))} steps")


if __name__ == '__main__':
  main(pathlib.Path(sys.argv[1]), sys.argv[2])
