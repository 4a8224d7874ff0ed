r"""REALM pre-training step: ours (JAX/Flax, jitted) vs Hugging Face's port.

  JAX_PLATFORMS=cpu .venv/bin/python bench/hf_port_step.py [--steps=10]
      [--rounds=3] [--breakdown]

Needs the bench extra: `.venv/bin/pip install -e '.[bench]'` (torch and a
transformers that still ships `transformers.models.deprecated.realm`).

One tiny shape (hidden 128, 2 layers, 2 heads, ffn 512, vocab 30,522; batch 8,
8 candidates with the null doc first, query 64, block 288, joint 128, 10
masks), the same random inputs on both sides, one full training step each:

  ours  `trainer.train_step` of objectives/realm.py under `trainer.jit_train_step`, on a 1-device
        CPU mesh: shared retriever tower embeds the query and the 8 candidates,
        p(z|x) = softmax of the inner products, the reader over the 8 joint
        sequences, per-mask logsumexp_z marginal, optax AdamW (+ clipping)
        over all parameters. Dropout on (config default 0.1).
  HF    one `RealmEmbedder` used for both query and candidates (REALM's
        share_embedders=True, as `RealmScorer` does when given no
        query_embedder), the einsum scores, `RealmKnowledgeAugEncoder(...,
        relevance_score=scores, labels, mlm_mask).loss` (its own marginal MLM
        loss), loss.backward(), clip_grad_norm_(1.0), torch.optim.AdamW (no
        decay on biases and LayerNorm, as ours). PyTorch on CPU with
        torch.set_num_threads(2), train() mode (dropout 0.1).

Both run in this process, on the allocator realm_jax's jobs run on (the
process re-executes itself under tcmalloc when the machine has it, as the
jobs do; REALM_TCMALLOC=0 keeps the C library's malloc, under which both
sides are slower, HF more so); rounds alternate ours/HF so machine noise
hits both.
Reports the median seconds per step of each round, the median over rounds
and the ratio HF/ours. No timing is asserted. `--breakdown` also times the
forward (loss only) of each side and splits the HF step into its parts.
"""
import argparse
import functools
import os
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import optim
from realm_jax import sharding
from realm_jax import trainer
from realm_jax.objectives import realm as realm_objective

# The shape under test.
VOCAB = 30522
B, K, Q, L, J, M = 8, 8, 64, 288, 128, 10
CLS, SEP, MASK = 101, 102, 103
LEARNING_RATE = 1e-4


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Random REALM pre-training inputs in our batch layout.

  Queries are `[CLS] sentence [SEP]` with 10 `[MASK]`s, padded; candidate 0
  is the null doc `[CLS] [SEP] [SEP]`, the others `[CLS] title [SEP] body
  [SEP]` filling the block; joint rows are `[CLS] query [SEP] body [SEP]`
  (the query copied, so a mask sits at the same position in every row).
  """
  rng = np.random.default_rng(seed)
  words = lambda n: rng.integers(1000, VOCAB, n)
  query_ids = np.zeros((B, Q), np.int32)
  mlm_positions = np.zeros((B, M), np.int32)
  mlm_targets = np.zeros((B, M), np.int32)
  candidate_ids = np.zeros((B, K, L), np.int32)
  candidate_segments = np.zeros((B, K, L), np.int32)
  joint_ids = np.zeros((B, K, J), np.int32)
  joint_segments = np.zeros((B, K, J), np.int32)
  for b in range(B):
    length = int(rng.integers(40, Q + 1))
    query = np.concatenate([[CLS], words(length - 2), [SEP]])
    positions = np.sort(rng.choice(np.arange(1, length - 1), M, replace=False))
    mlm_positions[b] = positions
    mlm_targets[b] = query[positions]
    query[positions] = MASK
    query_ids[b, :length] = query
    for k in range(K):
      if k == 0:  # the null document
        title, body = np.array([], np.int64), np.array([], np.int64)
      else:
        title = words(int(rng.integers(2, 12)))
        body = words(L - 3 - len(title))
      block = np.concatenate([[CLS], title, [SEP], body, [SEP]])
      candidate_ids[b, k, :len(block)] = block
      candidate_segments[b, k, 2 + len(title):len(block)] = 1
      joint = np.concatenate([query, body[:J - length - 1], [SEP]])
      joint_ids[b, k, :len(joint)] = joint
      joint_segments[b, k, length:len(joint)] = 1
  return dict(
      query_ids=query_ids, query_mask=(query_ids != 0).astype(np.int32),
      candidate_ids=candidate_ids, candidate_segments=candidate_segments,
      candidate_mask=(candidate_ids != 0).astype(np.int32),
      candidate_valid=np.ones((B, K), np.int32), reader_ids=joint_ids, reader_segments=joint_segments,
      reader_mask=(joint_ids != 0).astype(np.int32),
      mlm_positions=mlm_positions, mlm_targets=mlm_targets,
      mlm_weights=np.ones((B, M), np.float32))


def model_config():
  config = config_lib.model_config('tiny', vocab_size=VOCAB)
  assert (config.hidden_size, config.num_layers, config.num_heads,
          config.intermediate_size) == (128, 2, 2, 512), config
  return config


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


class Ours:
  """Our jitted pre-training step on a 1-CPU-device mesh."""

  name = 'ours (JAX)'

  def __init__(self, batch):
    config = model_config()
    self.mesh = sharding.make_mesh(config_lib.mesh_config(),
                                   jax.local_devices()[:1])
    self.tx = optim.make_optimizer(optim.optimizer_config(LEARNING_RATE),
                                   1000)
    self.graphdef, self.state, shardings, _ = trainer.init_train_state(
        lambda: models.REALM(config, rngs=nnx.Rngs(0)), self.tx, self.mesh,
        config_lib.AXIS_RULES)
    self.num_params = count(self.state['params'])
    batch_sharding = sharding.batch_sharding(self.mesh, config_lib.AXIS_RULES)
    self.step_fn = trainer.jit_train_step(
        functools.partial(trainer.train_step, graphdef=self.graphdef,
                          tx=self.tx, loss_fn=realm_objective.loss),
        shardings, batch_sharding, self.mesh)
    self.batch = sharding.global_batch(batch, batch_sharding)
    self.key = jax.random.PRNGKey(0)
    self.losses = []

  def warmup(self) -> float:
    """Compiles and runs the first step; returns the seconds it took."""
    start = time.perf_counter()
    self.run(1)
    return time.perf_counter() - start

  def run(self, steps: int) -> np.ndarray:
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.step_fn(self.state, self.batch, self.key)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - start)
      self.losses.append(metrics)
    return np.array(times)

  def loss(self, index: int) -> float:
    return float(self.losses[index]['loss'])

  def part_times(self, steps: int) -> dict[str, float]:
    """Median seconds of jitted pieces of our step (dropout on)."""
    graphdef, realm_loss = self.graphdef, realm_objective.loss

    def retriever(params, batch, key):
      model, rngs = nnx.merge(graphdef, params), nnx.Rngs(dropout=key)
      queries = model.retriever.embed_queries(
          batch['query_ids'], jnp.zeros_like(batch['query_ids']),
          batch['query_mask'], rngs=rngs)
      docs = model.retriever.embed_blocks(
          batch['candidate_ids'].reshape(B * K, L),
          batch['candidate_segments'].reshape(B * K, L),
          batch['candidate_mask'].reshape(B * K, L),
          rngs=rngs).reshape(B, K, -1)
      return jnp.einsum('bd,bkd->bk', queries, docs).sum()

    def reader(params, batch, key):
      model = nnx.merge(graphdef, params)
      return model.reader(batch['reader_ids'].reshape(B * K, J),
                          batch['reader_segments'].reshape(B * K, J),
                          batch['reader_mask'].reshape(B * K, J),
                          rngs=nnx.Rngs(dropout=key)).sum()

    loss = lambda params, batch, key: realm_loss(params, batch, key,
                                                 graphdef)[0]
    # Copies: the full step donates (invalidates) the state it is given.
    state = jax.tree.map(jnp.copy, self.state)
    args = (state['params'], self.batch, self.key)
    grads = jax.jit(jax.grad(loss))(*args)

    def update(grads, state):
      updates, opt_state = self.tx.update(grads, state['opt_state'],
                                          state['params'])
      return optax.apply_updates(state['params'], updates), opt_state

    def full_step():
      self.state, metrics = self.step_fn(self.state, self.batch, self.key)
      return self.state, metrics

    pieces = {
        'retriever fwd (query + 64 docs)': (jax.jit(retriever), args),
        'reader encoder fwd': (jax.jit(reader), args),
        'whole loss fwd': (jax.jit(loss), args),
        'loss fwd + bwd': (jax.jit(jax.grad(loss)), args),
        'update (clip + AdamW)': (jax.jit(update), (grads, state)),
        'full step': (full_step, ()),
    }
    for fn, fn_args in pieces.values():  # compile outside the timing
      jax.block_until_ready(fn(*fn_args))
    # Round-robin, so the machine's drift hits every piece alike (timed one
    # piece after another, a drift of 10-20% looked like a 0.33 s gap).
    times = {name: [] for name in pieces}
    for _ in range(steps):
      for name, (fn, fn_args) in pieces.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        times[name].append(time.perf_counter() - start)
    parts = {name: float(np.median(v)) for name, v in times.items()}
    parts['full step - loss fwd + bwd'] = (parts['full step']
                                          - parts['loss fwd + bwd'])
    return parts


class HuggingFace:
  """The HF port: RealmEmbedder (shared) + RealmKnowledgeAugEncoder."""

  name = 'HF port (torch)'

  def __init__(self, batch):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers.models.deprecated.realm import modeling_realm  # pylint: disable=g-import-not-at-top
    from transformers.models.deprecated.realm.configuration_realm import RealmConfig  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ours = model_config()
    self.config = RealmConfig(
        vocab_size=VOCAB, hidden_size=ours.hidden_size,
        num_hidden_layers=ours.num_layers,
        num_attention_heads=ours.num_heads,
        intermediate_size=ours.intermediate_size,
        retriever_proj_size=ours.projection_size, num_candidates=K,
        hidden_act='gelu',  # exact erf GELU, as ours (the port's default
                            # is gelu_new, the tanh approximation)
        hidden_dropout_prob=ours.dropout_rate,
        attention_probs_dropout_prob=ours.attention_dropout_rate,
        max_position_embeddings=ours.max_position_embeddings,
        type_vocab_size=ours.type_vocab_size,
        layer_norm_eps=ours.layer_norm_eps)
    self.embedder = modeling_realm.RealmEmbedder(self.config).train()
    self.encoder = modeling_realm.RealmKnowledgeAugEncoder(self.config).train()
    modules = (self.embedder, self.encoder)
    # Parameters that can get a gradient: RealmEmbedder also holds an unused
    # MLM head (`cls.predictions`) that REALM's retriever does not have.
    named = [(n, p) for m in modules for n, p in m.named_parameters()
             if not n.startswith('cls.predictions') or m is self.encoder]
    self.params = [p for _, p in named]
    self.num_params = sum(p.numel() for p in
                          {id(p): p for p in self.params}.values())
    no_decay = lambda n: n.endswith('bias') or 'LayerNorm' in n
    self.optimizer = torch.optim.AdamW(
        [dict(params=[p for n, p in named if not no_decay(n)],
              weight_decay=0.01),
         dict(params=[p for n, p in named if no_decay(n)],
              weight_decay=0.0)],
        lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-6)

    t = lambda x: torch.from_numpy(np.asarray(x, np.int64))
    self.query = dict(input_ids=t(batch['query_ids']),
                      attention_mask=t(batch['query_mask']),
                      token_type_ids=torch.zeros(B, Q, dtype=torch.long))
    self.candidates = dict(
        input_ids=t(batch['candidate_ids']).view(B * K, L),
        attention_mask=t(batch['candidate_mask']).view(B * K, L),
        token_type_ids=t(batch['candidate_segments']).view(B * K, L))
    self.joint = dict(input_ids=t(batch['reader_ids']),
                      attention_mask=t(batch['reader_mask']),
                      token_type_ids=t(batch['reader_segments']))
    # The port scores every joint position: labels [B, J], -100 off-mask.
    labels = np.full((B, J), -100, np.int64)
    np.put_along_axis(labels, batch['mlm_positions'],
                      batch['mlm_targets'].astype(np.int64), axis=1)
    self.labels = torch.from_numpy(labels)
    self.mlm_mask = self.labels != -100
    self.losses = []

  def scores(self):
    query = self.embedder(**self.query).projected_score  # [B, D]
    docs = self.embedder(**self.candidates).projected_score.view(B, K, -1)
    return self.torch.einsum('bd,bkd->bk', query, docs)

  def loss(self, index: int | None = None):
    if index is not None:
      return self.losses[index]
    return self.encoder(**self.joint, relevance_score=self.scores(),
                        labels=self.labels, mlm_mask=self.mlm_mask).loss

  def step(self) -> float:
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss()
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.optimizer.step()
    return loss.item()

  def warmup(self, steps: int = 2) -> float:
    start = time.perf_counter()
    self.run(steps)
    return (time.perf_counter() - start) / steps

  def run(self, steps: int) -> np.ndarray:
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.losses.append(self.step())
      times.append(time.perf_counter() - start)
    return np.array(times)

  def part_times(self, steps: int) -> dict[str, float]:
    """Median seconds of the pieces of one HF step (with grad enabled)."""
    torch = self.torch
    parts = {'retriever fwd (query + 64 docs)': [], 'reader encoder fwd': [],
             'MLM head + loss fwd': [], 'backward': [],
             'update (clip + AdamW)': []}
    for _ in range(steps):
      self.optimizer.zero_grad(set_to_none=True)
      t0 = time.perf_counter()
      scores = self.scores()
      t1 = time.perf_counter()
      sequence = self.encoder.realm(
          self.joint['input_ids'].view(B * K, J),
          attention_mask=self.joint['attention_mask'].view(B * K, J),
          token_type_ids=self.joint['token_type_ids'].view(B * K, J))[0]
      t2 = time.perf_counter()
      # The rest of RealmKnowledgeAugEncoder.forward, as it is written.
      logits = self.encoder.cls(sequence).view(-1, VOCAB)
      log_p_y = -torch.nn.functional.cross_entropy(
          logits, self.labels.tile(1, K).view(-1),
          reduction='none').view(B, K, J)
      joint = scores.log_softmax(-1).unsqueeze(-1) + log_p_y
      marginal = joint.logsumexp(1)
      loss = -torch.nansum(torch.sum(marginal * self.mlm_mask)
                           / torch.sum(self.mlm_mask))
      loss.item()
      t3 = time.perf_counter()
      loss.backward()
      t4 = time.perf_counter()
      torch.nn.utils.clip_grad_norm_(self.params, 1.0)
      self.optimizer.step()
      t5 = time.perf_counter()
      for name, (a, b) in zip(parts, [(t0, t1), (t1, t2), (t2, t3), (t3, t4),
                                      (t4, t5)]):
        parts[name].append(b - a)
    parts = {name: float(np.median(v)) for name, v in parts.items()}
    parts['whole loss fwd'] = sum(parts[name] for name in list(parts)[:3])
    parts['loss fwd + bwd'] = parts['whole loss fwd'] + parts['backward']
    parts['full step'] = parts['loss fwd + bwd'] + parts[
        'update (clip + AdamW)']
    return parts


def main():
  # Both sides in one process on the allocator the jobs run on (tcmalloc
  # when the machine has it; REALM_TCMALLOC=0 for the C library's malloc).
  cli.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=10,
                      help='timed steps per side per round')
  parser.add_argument('--rounds', type=int, default=3,
                      help='alternating ours/HF measurement rounds')
  parser.add_argument('--breakdown', action='store_true',
                      help='also time the parts of each step')
  args = parser.parse_args()

  batch = make_batch()
  hf = HuggingFace(batch)
  ours = Ours(batch)
  compile_s = ours.warmup()
  hf_warm_s = hf.warmup(2)
  ours.run(2)
  first_ours, first_hf = ours.loss(0), hf.loss(0)

  rounds = {ours.name: [], hf.name: []}
  for r in range(args.rounds):
    first, second = (ours, hf) if r % 2 == 0 else (hf, ours)
    for side in (first, second):
      rounds[side.name].append(float(np.median(side.run(args.steps))))

  print(f'\nREALM pre-training step, hidden 128 / 2 layers / 2 heads / ffn '
        f'512 / vocab {VOCAB}; batch {B}, {K} candidates, query {Q}, block '
        f'{L}, joint {J}, {M} masks; {os.cpu_count()} CPUs, jax '
        f'{jax.__version__} ({jax.devices()[0].platform}), torch '
        f'{hf.torch.__version__} ({hf.torch.get_num_threads()} threads); '
        f'host allocator: {cli.host_allocator()}')
  print(f'parameters: ours {ours.num_params / 1e6:.2f}M, HF (trainable) '
        f'{hf.num_params / 1e6:.2f}M; ours compile+first step '
        f'{compile_s:.1f}s, HF warm-up {hf_warm_s:.3f}s/step')
  print(f'{args.rounds} rounds x {args.steps} steps each, alternating; '
        's/step = median within a round\n')
  header = ''.join(f'{"round " + str(r + 1):>10s}'
                   for r in range(args.rounds))
  print(f'{"":18s}{header}{"median":>10s}')
  medians = {}
  for name, values in rounds.items():
    medians[name] = float(np.median(values))
    cells = ''.join(f'{v:10.4f}' for v in values)
    print(f'{name:18s}{cells}{medians[name]:10.4f}')
  ratios = [h / o for h, o in zip(rounds[hf.name], rounds[ours.name])]
  cells = ''.join(f'{v:9.2f}x' for v in ratios)
  print(f'{"HF / ours":18s}{cells}{np.median(ratios):9.2f}x')
  print(f'ratio of the medians: {medians[hf.name] / medians[ours.name]:.2f}x'
        ' (the last cell above is the median of the per-round ratios, '
        'which pairs measurements taken close in time)')

  last_ours, last_hf = ours.loss(-1), hf.loss(-1)
  print(f'\nloss at init: ours {first_ours:.4f}, HF {first_hf:.4f} '
        f'(log V = {np.log(VOCAB):.4f}); after all steps: ours '
        f'{last_ours:.4f}, HF {last_hf:.4f}')
  for name, value in [('ours', first_ours), ('HF', first_hf),
                      ('ours', last_ours), ('HF', last_hf)]:
    if not np.isfinite(value):
      print(f'WARNING: {name} loss is not finite: {value}')
  if abs(first_ours - first_hf) > 1.0:
    print('WARNING: initial losses differ by more than 1 nat')

  if args.breakdown:
    steps = max(args.steps, 3)
    parts = {}
    for r in range(2):  # ours, HF, HF, ours: noise hits both
      for side in (ours, hf) if r == 0 else (hf, ours):
        for name, seconds in side.part_times(steps).items():
          parts.setdefault(name, {}).setdefault(side.name, []).append(seconds)
    print(f'\nstep split into parts (median s over {steps} steps, mean of 2 '
          'rounds; ours: separately jitted pieces timed round-robin, HF: timed '
          'inside the step)')
    print(f'{"":34s}{ours.name:>16s}{hf.name:>18s}{"HF / ours":>11s}')
    for name, by_side in parts.items():
      o, h = (float(np.mean(by_side[s])) if s in by_side else None
              for s in (ours.name, hf.name))
      cells = ''.join('' if v is None else f'{v:{w}.4f}'
                      for v, w in [(o, 16), (h, 18)]) if o and h else (
                          f'{o:16.4f}{"-":>18s}' if o else
                          f'{"-":>16s}{h:18.4f}')
      ratio = f'{h / o:10.2f}x' if o and h and o > 0 else ''
      print(f'{name:34s}{cells}{ratio}')


if __name__ == '__main__':
  main()
