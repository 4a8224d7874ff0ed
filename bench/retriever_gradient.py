"""Where REALM's retriever gradient points, at one (reader, retriever) pair.

For N masked queries and their K best blocks by exact search (own block
excluded): the gradient of REALM's marginal loss w.r.t. the retriever,
against
- the gradient of -log p(a candidate that holds the masked span): the
  direction that would raise fact recall (split by queries with a holder
  among their candidates and without);
- with --questions (JSON lines with `question` and squad_open's
  `para_id`): the gradient of -log p(gold paragraph | question) over the
  gold block and the K - 1 best others: the direction that would raise
  zero-shot question retrieval.
cos > 0: a REALM step also moves that way. And how noisy each gradient is:
from per-chunk gradient sums S_c (n_c queries each, T their sum) the
per-query signal |mu|^2 = (|T|^2 - sum |S_c|^2) / (N^2 - sum n_c^2) and
noise sigma^2 = (sum |S_c|^2 - sum n_c^2 |mu|^2) / N, unbiased for
independent queries; a batch of B queries points at cosine
sqrt(B r / (1 + B r)) to the mean gradient, r = |mu|^2 / sigma^2, and
1 / r queries carry as much signal as noise.

  python bench/retriever_gradient.py --bed WORKDIR  # WORKDIR/{corpus,mlm,ict}
  python bench/retriever_gradient.py --bed W --reader W/mlm --retriever RUN
  # SQuAD-open, the paper table's stages (B/{corpus,mlm,ict}) and a REALM run:
  python bench/retriever_gradient.py --bed B --examples REALM_RUN/examples \
      --questions W/data/finetune.jsonl --queries=256 --candidates=4 \
      --joint_len=256 --query_len=96 --chunk=8 --null_document=relative

Measured: README, The learning test bed, and REALM on SQuAD-open.
"""
import argparse
import json
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
from flax import nnx  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import retrieval_eval as re_  # pylint: disable=g-import-not-at-top  (bench/)
from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
from realm_jax import models  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import blocks as blocks_lib  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import openqa as openqa_input  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import pretrain as pi  # pylint: disable=g-import-not-at-top
from realm_jax.objectives import realm as ro  # pylint: disable=g-import-not-at-top
from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def total(sums):
  return sum(s for _, s in sums)


def _ratio(n, sq, tt):
  """|mu|^2 / sigma^2 from chunk sizes n, sum |S_c|^2 and |T|^2."""
  mu2 = (tt - sq) / (n.sum() ** 2 - (n ** 2).sum())
  sigma2 = (sq - (n ** 2).sum() * mu2) / n.sum()
  return mu2 / sigma2


def signal_to_noise(sums) -> tuple[float, float]:
  """Per-query |mu|^2 / sigma^2 from [(n_c, S_c)] chunk gradient sums of
  independent queries (module docstring), and its jackknife standard
  error over chunks."""
  n = np.array([c for c, _ in sums], float)
  norms = np.array([float(s @ s) for _, s in sums])
  t = total(sums)
  dots = np.array([float(t @ s) for _, s in sums])
  tt = float(t @ t)
  r = _ratio(n, norms.sum(), tt)
  keep = ~np.eye(len(sums), dtype=bool)
  loo = np.array([_ratio(n[keep[c]], norms.sum() - norms[c],
                         tt - 2 * dots[c] + norms[c])
                  for c in range(len(sums))])
  se = np.sqrt((len(sums) - 1) / len(sums) * ((loo - loo.mean()) ** 2).sum())
  return float(r), float(se)


def batch_cosine(r: float, batch: int) -> float:
  """Expected cosine of a batch-mean gradient to the mean gradient."""
  r = max(r, 0.0)
  return float(np.sqrt(batch * r / (1 + batch * r)))


def cos(a, b) -> float:
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--bed', required=True,
                      help='holds corpus/ and mlm/examples')
  parser.add_argument('--reader', default='',
                      help='default BED/mlm (RUN[@STEP])')
  parser.add_argument('--retriever', default='',
                      help='default BED/ict (RUN[@STEP])')
  parser.add_argument('--examples', default='',
                      help='salient-span examples, default BED/mlm/examples')
  parser.add_argument('--questions', default='', help='JSON lines with para_id')
  parser.add_argument('--queries', type=int, default=512)
  parser.add_argument('--candidates', type=int, default=8)
  parser.add_argument('--query_len', type=int, default=40)
  parser.add_argument('--joint_len', type=int, default=72)
  parser.add_argument('--chunk', type=int, default=64,
                      help='queries per gradient call (memory)')
  parser.add_argument('--seed', type=int, default=99)
  parser.add_argument('--null_document', default='embedded',
                      help="the REALM run's config.null_document")
  args = parser.parse_args()
  bed = args.bed
  reader_run = args.reader or f'{bed}/mlm'
  retr_run = args.retriever or f'{bed}/ict'
  N, K = args.queries, args.candidates
  corpus = corpus_lib.Corpus(f'{bed}/corpus')
  inp = pi.PretrainInput(corpus, args.examples or f'{bed}/mlm/examples',
                         global_batch_size=N, query_len=args.query_len,
                         max_masks=10, seed=args.seed)
  q = inp.batch(0)
  cfg = workspace.read_config(retr_run.partition('@')[0]).model
  relative = args.null_document == 'relative'
  graphdef, state = nnx.split(models.REALM(cfg, rngs=nnx.Rngs(0),
                                           null_offset=relative))
  params = nnx.to_pure_dict(state)

  def load(run, part):
    run, _, step = run.partition('@')
    m = checkpointing.make_manager(f'{run}/checkpoints', read_only=True)
    return checkpointing.restore_subtree(
        m, int(step) if step else m.latest_step(), ('params', part),
        checkpointing.abstract(params[part]))

  params = dict(params, reader=load(reader_run, 'reader'),
                retriever=load(retr_run, 'retriever'))
  if relative and workspace.read_config(reader_run.partition('@')[0]).get(
      'null_document') == 'relative':  # a REALM run's learned offset, else 0
    params['null_offset'] = load(reader_run, 'null_offset')
  ret = nnx.merge(graphdef, params).retriever
  bv = re_._embed(ret.embed_blocks, re_._block_inputs(corpus), 64)

  def embed_queries(inputs):  # query_ids / query_mask, as both inputs have
    return re_._embed(ret.embed_queries, dict(
        token_ids=inputs['query_ids'],
        segment_ids=np.zeros_like(inputs['query_ids']),
        input_mask=inputs['query_mask']), 64)

  qv = embed_queries(q)
  top = re_.exact_search(bv, qv, K + 4)
  chosen, valid = pi.choose_candidates(
      top, corpus.uid64(top).reshape(top.shape), q['source_uid64'], K)
  holds = pi.span_holders(corpus, q, chosen, valid)
  ci = pi.candidate_inputs(corpus, q, chosen, args.joint_len)
  keys = ('query_ids', 'query_mask', 'mlm_positions', 'mlm_targets',
          'mlm_weights')
  masked = {k: q[k] for k in keys} | ci | dict(
      candidate_valid=valid.astype(np.int32),
      candidate_holds_span=holds.astype(np.int32))

  def realm_loss(retr, b):
    return ro.loss(dict(params, retriever=retr), b, None, graphdef,
                   args.null_document)[0]

  def target_loss(retr, b):
    """-log p(a target candidate): mean over rows with one."""
    m = nnx.merge(graphdef, dict(params, retriever=retr))
    B, k, L = b['candidate_ids'].shape
    qv = m.retriever.embed_queries(
        b['query_ids'], jnp.zeros_like(b['query_ids']), b['query_mask'])
    dv = m.retriever.embed_blocks(
        b['candidate_ids'].reshape(B * k, L),
        b['candidate_segments'].reshape(B * k, L),
        b['candidate_mask'].reshape(B * k, L)).reshape(B, k, -1)
    lp = jax.nn.log_softmax(jnp.einsum('bd,bkd->bk', qv, dv), -1)
    h = b['candidate_holds_span'].astype(bool)
    per = -jax.nn.logsumexp(jnp.where(h, lp, -1e9), -1)
    has = h.any(1)
    return jnp.where(has, per, 0).sum() / jnp.maximum(has.sum(), 1)

  def chunk_sums(fn, batch, rows):
    """[(n_c, S_c)]: per-chunk gradient sums over `rows` (fn is a mean)."""
    grad = jax.jit(jax.grad(fn))
    out = []
    for s in range(0, len(rows), args.chunk):
      r = rows[s:s + args.chunk]
      g = grad(params['retriever'], {k: v[r] for k, v in batch.items()})
      out.append((len(r), flat(g) * len(r)))
    return out

  def report_noise(name, sums):
    r, se = signal_to_noise(sums)
    print(f'{name}: per-query signal/noise {r:.2e} +- {se:.1e}; a batch of '
          f'8 points at cos {batch_cosine(r, 8):.3f}, of 512 at '
          f'{batch_cosine(r, 512):.3f} to the mean; '
          f'{1 / r if r > 0 else float("inf"):.0f} queries for signal = noise')
    return r

  has = holds.any(1)
  rows = np.concatenate([np.flatnonzero(has), np.flatnonzero(~has)])
  realm_sums = chunk_sums(realm_loss, masked, rows)
  n_has = int(has.sum())
  # Chunks never straddle the holder / no-holder boundary unless n_has is
  # not a multiple of the chunk; then the straddling chunk counts as holder.
  # (Chunks grouped by holder status bias the noise estimates by O(chunk/N).)
  holder_chunks = -(-n_has // args.chunk)
  g_realm = total(realm_sums)
  g_realm_h = total(realm_sums[:holder_chunks])
  g_realm_nh = total(realm_sums[holder_chunks:])
  g_fact = total(chunk_sums(target_loss, masked, np.flatnonzero(has)))
  print(f'{N} masked queries, K={K}: holder present {has.mean():.3f}')
  print(f'cos(realm, fact) {cos(g_realm, g_fact):+.3f}; '
        f'cos(realm on holder queries, fact) {cos(g_realm_h, g_fact):+.3f}; '
        f'cos(realm on no-holder queries, fact) {cos(g_realm_nh, g_fact):+.3f}')
  print(f'norms per query: holder-queries part '
        f'{np.linalg.norm(g_realm_h) / N:.4f}, no-holder part '
        f'{np.linalg.norm(g_realm_nh) / N:.4f}')
  r_realm = report_noise('realm', realm_sums)

  if args.questions:
    questions = [json.loads(l) for l in open(args.questions) if l.strip()]
    rng = np.random.default_rng(args.seed)
    questions = [questions[i] for i in rng.permutation(len(questions))[:N]]
    qi = openqa_input.question_inputs(corpus.tokenizer,
                                      [x['question'] for x in questions], 96)
    qqv = embed_queries(qi)
    doc_ids = np.array([r['doc_id'] for r in corpus.records(
        np.arange(len(corpus)))])
    gold_of = {}
    for block, doc in enumerate(doc_ids):
      gold_of.setdefault(doc, block)
    ranked = re_.exact_search(bv, qqv, K)
    found = np.array([(doc_ids[r] == x['para_id']).any()
                      for r, x in zip(ranked, questions)])
    # The gold paragraph's first block replaces the last of the top K when
    # the search missed it: every row has a target.
    chosen_q = np.array([r if hit else [gold_of[x['para_id']], *r[:K - 1]]
                         for r, x, hit in zip(ranked, questions, found)])
    gold = (doc_ids[chosen_q] == np.array(
        [x['para_id'] for x in questions])[:, None]).astype(np.int32)
    print(f'{len(questions)} questions: gold in the top {K} '
          f'{found.mean():.3f}')
    cand = blocks_lib.retriever_inputs(corpus, chosen_q)
    qa = dict(query_ids=qi['query_ids'], query_mask=qi['query_mask'],
              candidate_ids=cand['token_ids'],
              candidate_segments=cand['segment_ids'],
              candidate_mask=cand['input_mask'], candidate_holds_span=gold)
    qa_sums = chunk_sums(target_loss, qa, np.arange(len(questions)))
    g_qa = total(qa_sums)
    print(f'cos(realm, question->gold) {cos(g_realm, g_qa):+.3f}; '
          f'cos(realm on holder queries, question->gold) '
          f'{cos(g_realm_h, g_qa):+.3f}; on no-holder queries '
          f'{cos(g_realm_nh, g_qa):+.3f}; cos(fact, question->gold) '
          f'{cos(g_fact, g_qa):+.3f}')
    r_qa = report_noise('question->gold', qa_sums)
    # Independent queries: each estimate's noise (orthogonal to everything,
    # in these dimensions) shrinks the cosine by its cosine to its mean.
    shrink = batch_cosine(r_realm, N) * batch_cosine(r_qa, len(questions))
    print('cos(realm, question->gold) of the mean gradients, corrected for '
          'both estimates\' noise: ' + (
              f'{cos(g_realm, g_qa) / shrink:+.2f}' if shrink > 0 else
              'undefined (no signal measured in one of them)'))


if __name__ == '__main__':
  main()
