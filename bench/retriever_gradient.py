"""Where REALM's retriever gradient points, at one (reader, retriever) pair.

On a corpus whose salient spans have holders (the synthetic bed), for N
masked queries and their K - 1 best blocks by exact search (own excluded):
the gradient of REALM's marginal loss w.r.t. the retriever, against the
gradient of -log p(a candidate that holds the masked span) - the direction
that would raise fact recall - and the agreement of two half-batch
estimates (how noisy one step's gradient is). cos > 0: a REALM step also
raises fact recall. Split by queries with a holder among their candidates
and without.

  python bench/retriever_gradient.py --bed WORKDIR  # WORKDIR/{corpus,mlm,ict}
  python bench/retriever_gradient.py --bed W --reader W/mlm --retriever RUN

Measured: README, The learning test bed.
"""
import argparse
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
from realm_jax.inputs import pretrain as pi  # pylint: disable=g-import-not-at-top
from realm_jax.objectives import realm as ro  # pylint: disable=g-import-not-at-top
from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top

parser = argparse.ArgumentParser()
parser.add_argument('--bed', required=True, help='holds corpus/ and mlm/examples')
parser.add_argument('--reader', default='', help='default BED/mlm (RUN[@STEP])')
parser.add_argument('--retriever', default='', help='default BED/ict (RUN[@STEP])')
parser.add_argument('--queries', type=int, default=512)
parser.add_argument('--candidates', type=int, default=8)
parser.add_argument('--query_len', type=int, default=40)
parser.add_argument('--joint_len', type=int, default=72)
args = parser.parse_args()
bed = args.bed
reader_run = args.reader or f'{bed}/mlm'
retr_run = args.retriever or f'{bed}/ict'
N, K = args.queries, args.candidates
corpus = corpus_lib.Corpus(f'{bed}/corpus')
inp = pi.PretrainInput(corpus, f'{bed}/mlm/examples', global_batch_size=N,
                       query_len=args.query_len, max_masks=10, seed=99)
q = inp.batch(0)
cfg = workspace.read_config(retr_run.partition('@')[0]).model
graphdef, state = nnx.split(models.REALM(cfg, rngs=nnx.Rngs(0)))
params = nnx.to_pure_dict(state)
def load(run, part):
  run, _, step = run.partition('@')
  m = checkpointing.make_manager(f'{run}/checkpoints', read_only=True)
  return checkpointing.restore_subtree(m, int(step) if step else m.latest_step(), ('params', part), checkpointing.abstract(params[part]))
params = dict(params, reader=load(reader_run, 'reader'), retriever=load(retr_run, 'retriever'))
ret = nnx.merge(graphdef, params).retriever
bv = re_._embed(ret.embed_blocks, re_._block_inputs(corpus), 64)
qv = re_._embed(ret.embed_queries, dict(token_ids=q['query_ids'], segment_ids=np.zeros_like(q['query_ids']), input_mask=q['query_mask']), 64)
top = re_.exact_search(bv, qv, K + 4)
chosen, valid = pi.choose_candidates(top, corpus.uid64(top).reshape(top.shape), q['source_uid64'], K)
holds = pi.span_holders(corpus, q, chosen, valid)
ci = pi.candidate_inputs(corpus, q, chosen, args.joint_len)
keys = ('query_ids','query_mask','mlm_positions','mlm_targets','mlm_weights')
full = {k: q[k] for k in keys} | ci | dict(candidate_valid=valid.astype(np.int32), candidate_holds_span=holds.astype(np.int32))

def realm_loss(retr, b):
  return ro.loss(dict(params, retriever=retr), b, None, graphdef)[0]
def fact_loss(retr, b):
  m = nnx.merge(graphdef, dict(params, retriever=retr))
  B, k, L = b['candidate_ids'].shape
  qv = m.retriever.embed_queries(b['query_ids'], jnp.zeros_like(b['query_ids']), b['query_mask'])
  dv = m.retriever.embed_blocks(b['candidate_ids'].reshape(B*k, L), b['candidate_segments'].reshape(B*k, L), b['candidate_mask'].reshape(B*k, L)).reshape(B, k, -1)
  lp = jax.nn.log_softmax(jnp.einsum('bd,bkd->bk', qv, dv), -1)
  h = b['candidate_holds_span'].astype(bool)
  has = h.any(1)
  per = -jax.nn.logsumexp(jnp.where(h, lp, -1e9), -1)
  return jnp.where(has, per, 0).sum() / jnp.maximum(has.sum(), 1)
gr = jax.jit(jax.grad(realm_loss)); gf = jax.jit(jax.grad(fact_loss))
flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
def grad_sum(fn, rows):
  tot = None
  for s in range(0, len(rows), 64):
    r = rows[s:s+64]
    b = {k: v[r] for k, v in full.items()}
    g = flat(fn(params['retriever'], b)) * len(r)
    tot = g if tot is None else tot + g
  return tot / len(rows)
cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
rows = np.arange(N)
g_realm = grad_sum(gr, rows); g_fact = grad_sum(gf, rows)
h1, h2 = grad_sum(gr, rows[:N//2]), grad_sum(gr, rows[N//2:])
has = holds.any(1)
g_realm_h = grad_sum(gr, rows[has]); g_realm_nh = grad_sum(gr, rows[~has])
print(f'holder present {has.mean():.3f}')
print(f'cos(realm, fact) {cos(g_realm, g_fact):+.3f}; cos(half1, half2) {cos(h1, h2):+.3f}')
print(f'cos(realm on holder queries, fact) {cos(g_realm_h, g_fact):+.3f}; cos(realm on no-holder queries, fact) {cos(g_realm_nh, g_fact):+.3f}')
print(f'norms: holder-queries part {np.linalg.norm(g_realm_h)*has.mean():.4f}, no-holder part {np.linalg.norm(g_realm_nh)*(1-has.mean()):.4f}')
