r"""Does the reader learn to copy a masked span from a block beside it?

  .venv/bin/python bench/reader_copy.py --corpus=CORPUS_DIR [--mlm=MLM_RUN]

REALM's retriever only learns when the reader predicts the masked span
better from a block that states it than from others (issue 12); BERT's
MLM training brings that ability, a short realm-mlm run on the synthetic
corpus does not. This bench isolates it: the reader (from a realm-mlm run,
or fresh) is trained with the masked-LM loss on
`[CLS] sentence with one salient span masked [SEP] evidence [SEP]`, where
the evidence is

  other: a block other than the sentence's own that also holds the span
         (what a perfect retriever would give REALM's reader);
  own:   the sentence's own block, so the span is there verbatim;

then the table gives its accuracy on held-out queries with each kind of
evidence and with the null document (REALM's z_0) as the baseline in the
same run: copying shows as evidence accuracy far above null accuracy.
Every row is the mean over the held-out queries +- one standard error.

Measured: README, The learning test bed.
"""
import argparse
import functools
import importlib.util
import os
import pathlib
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from flax import nnx  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
from realm_jax import models  # pylint: disable=g-import-not-at-top
from realm_jax import optim  # pylint: disable=g-import-not-at-top
from realm_jax import sharding  # pylint: disable=g-import-not-at-top
from realm_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import blocks as blocks_lib  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import mlm as mlm_input  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import pretrain as pretrain_input  # pylint: disable=g-import-not-at-top
from realm_jax.objectives import mlm as mlm_objective  # pylint: disable=g-import-not-at-top
from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
QUERY_LEN = 40
MAX_MASKS = 10


class EvidencePairs:
  """Salient-span queries and, per query, the blocks that also hold its span."""

  def __init__(self, corpus: corpus_lib.Corpus, examples: pathlib.Path,
               evidence_len: int = 128):
    self.corpus = corpus
    self.evidence_len = evidence_len
    self.linked = mlm_input.LinkedSpans(corpus, examples, QUERY_LEN)
    self.usable = self.linked.spans(at_least=0)  # those with a holder

  def batch(self, rows, evidence: str, rng: np.random.Generator,
            mask_rate: float = 0.0) -> dict:
    """MLM batch (objectives/mlm.py) of the queries `rows` beside their
    evidence: 'other', 'own' or 'null'. mask_rate > 0 masks that fraction
    of the sentence's pieces (at least one) instead of its salient span."""
    tokenizer = self.corpus.tokenizer
    n = len(rows)
    query_ids = np.zeros((n, QUERY_LEN), np.int32)
    query_mask = np.zeros_like(query_ids)
    positions = np.zeros((n, MAX_MASKS), np.int32)
    targets = np.zeros_like(positions)
    weights = np.zeros((n, MAX_MASKS), np.float32)
    evidence_ids = np.full((n, 1), blocks_lib.NULL_BLOCK, np.int64)
    for r, i in enumerate(rows):
      block = int(self.linked.block[i])
      begin, end, start, stop = (int(x) for x in self.linked.pieces[i])
      sentence = self.corpus.body_tokens(block)[begin:end][:QUERY_LEN - 2]
      query_ids[r, 0] = tokenizer.cls_id
      query_ids[r, 1:len(sentence) + 1] = sentence
      query_ids[r, len(sentence) + 1] = tokenizer.sep_id
      query_mask[r, :len(sentence) + 2] = 1
      masked = np.arange(start, min(stop, len(sentence))) + 1
      if mask_rate:
        masked = np.flatnonzero(rng.random(len(sentence)) < mask_rate) + 1
        masked = masked[:MAX_MASKS] if masked.size else np.array([1])
      scored = masked[:MAX_MASKS]
      positions[r, :len(scored)] = scored
      targets[r, :len(scored)] = query_ids[r, scored]
      weights[r, :len(scored)] = 1
      query_ids[r, masked] = tokenizer.mask_id
      if evidence == 'own':
        evidence_ids[r, 0] = block
      elif evidence == 'other':
        evidence_ids[r, 0] = rng.choice(self.linked.holders(i))
    reader = blocks_lib.reader_inputs(self.corpus, query_ids, query_mask,
                                      evidence_ids,
                                      QUERY_LEN + self.evidence_len)
    return dict(token_ids=reader['reader_ids'][:, 0],
                segment_ids=reader['reader_segments'][:, 0],
                input_mask=reader['reader_mask'][:, 0],
                mlm_positions=positions, mlm_targets=targets,
                mlm_weights=weights, encoder_trains=np.ones(n, np.int32))


def _model_config(args):
  """The reader without dropout: the --mlm run's, else the tiny one, which
  --layers/--hidden/--heads resize."""
  spec = importlib.util.spec_from_file_location('mlm', REPO / 'configs' /
                                                'mlm.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  if args.mlm:  # the run's reader, whatever its size (e.g. from MiniLM)
    config.model.update(workspace.read_config(args.mlm).model)
  config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  for field in ('num_layers', 'hidden_size', 'num_heads'):
    value = getattr(args, field)
    if value:
      if args.mlm:
        raise SystemExit(f'--{field}: only for a fresh reader (without --mlm)')
      config.model[field] = value
  if args.hidden_size:
    config.model.intermediate_size = 4 * args.hidden_size
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--corpus', required=True)
  parser.add_argument('--examples', default='',
                      help='salient-span examples (default: made in '
                      'CORPUS/../reader_copy_examples)')
  parser.add_argument('--mlm', default='', help='a realm-mlm workdir')
  parser.add_argument('--evidence', default='other', choices=('other', 'own'))
  parser.add_argument('--mask_rate', type=float, default=0.0,
                      help='train on this fraction of the pieces masked '
                      'instead of the salient span (evaluation: the span)')
  for field in ('num_layers', 'hidden_size', 'num_heads'):
    parser.add_argument(f'--{field}', type=int, default=0)
  parser.add_argument('--evidence_len', type=int, default=128,
                      help="the reader's room for the evidence block (title "
                      'and body), in pieces')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--eval_queries', type=int, default=256)
  parser.add_argument('--evals', type=int, default=6)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  corpus = corpus_lib.Corpus(args.corpus)
  examples = pathlib.Path(args.examples or pathlib.Path(args.corpus).parent /
                          'reader_copy_examples')
  if not (examples / pretrain_input.MANIFEST).exists():
    pretrain_input.prepare_examples(corpus, examples, annotator='builtin',
                                    query_len=QUERY_LEN, max_masks=MAX_MASKS)
  pairs = EvidencePairs(corpus, examples, args.evidence_len)
  rng = np.random.default_rng(args.seed)
  held_out = rng.choice(pairs.usable, args.eval_queries, replace=False)
  train_rows = np.setdiff1d(pairs.usable, held_out)
  eval_batches = {kind: pairs.batch(held_out, kind,
                                    np.random.default_rng(args.seed + 1))
                  for kind in ('other', 'own', 'null')}

  config = _model_config(args)
  mesh = sharding.make_mesh(config.mesh)
  optimizer = optim.optimizer_config(args.lr)
  optimizer.warmup_steps = args.steps // 10
  tx = optim.make_optimizer(optimizer, args.steps)
  graphdef, state, shardings, _ = trainer_lib.init_train_state(
      lambda: models.ReaderModel(config.model, rngs=nnx.Rngs(args.seed)),
      tx, mesh, config.axis_rules)
  if args.mlm:
    reader = checkpointing.restore_from_run(
        args.mlm, '--mlm', ('params', 'reader'),
        checkpointing.abstract(state['params']['reader']))
    params = dict(state['params'], reader=reader)
    state = dict(state, params=params, opt_state=jax.jit(tx.init)(params))
  step_fn = jax.jit(functools.partial(
      trainer_lib.train_step, graphdef=graphdef, tx=tx,
      loss_fn=mlm_objective.loss))

  @jax.jit
  def correct(params, batch):
    model = nnx.merge(graphdef, params)
    sequence = model.reader(batch['token_ids'], batch['segment_ids'],
                            batch['input_mask'])
    logits = model.reader.mlm_logits(sequence, batch['mlm_positions'])
    hits = (logits.argmax(-1) == batch['mlm_targets']) * batch['mlm_weights']
    return hits.sum(-1) / batch['mlm_weights'].sum(-1)

  def row(step, seconds):
    cells = []
    for kind in ('other', 'own', 'null'):
      per_query = np.asarray(correct(state['params'], eval_batches[kind]))
      se = per_query.std(ddof=1) / np.sqrt(len(per_query))
      cells.append(f'{per_query.mean():.3f} +- {se:.3f}')
    print(f'| {step:5d} | ' + ' | '.join(cells) + f' | {seconds:6.0f} |',
          flush=True)

  print(f'{len(pairs.usable)} of {len(pairs.linked.block)} salient-span queries '
        f'have a block other than their own that holds the span; '
        f'{args.eval_queries} held out. Training evidence: {args.evidence}.')
  print('| step  | acc, other block | acc, own block | acc, null doc | s |')
  print('|-------|------------------|----------------|---------------|---|')
  start = time.time()
  row(0, 0)
  key = jax.random.key(args.seed)
  for step in range(1, args.steps + 1):
    batch = pairs.batch(rng.choice(train_rows, args.batch), args.evidence,
                        rng, args.mask_rate)
    state, _ = step_fn(state, batch, key)
    if step % max(args.steps // args.evals, 1) == 0:
      row(step, time.time() - start)


if __name__ == '__main__':
  main()
