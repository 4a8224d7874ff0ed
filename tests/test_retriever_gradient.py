"""bench/retriever_gradient.py's noise estimates against sampled gradients
whose mean and noise are known."""
import numpy as np

import retriever_gradient  # bench/retriever_gradient.py


def _chunk_sums(rng, mu, sigma, sizes):
  """[(n, S)]: sums of n per-query gradients mu + sigma * N(0, I)."""
  return [(n, n * mu + sigma * rng.normal(size=(n, mu.size)).sum(0))
          for n in sizes]


def test_signal_to_noise_recovers_the_ratio():
  rng = np.random.default_rng(0)
  dim = 20_000
  mu = rng.normal(size=dim) * 0.05  # |mu|^2 = 50
  sigma = 1.0                       # per-query noise |eps|^2 = 20,000
  truth = float(mu @ mu) / dim
  sizes = [8] * 60 + [5, 3]         # unequal chunks, as the last ones are
  estimates, errors = zip(*[retriever_gradient.signal_to_noise(
      _chunk_sums(rng, mu, sigma, sizes)) for _ in range(12)])
  assert abs(np.mean(estimates) / truth - 1) < 0.1, (estimates, truth)
  # The jackknife standard error is the estimates' spread.
  assert 0.6 < np.mean(errors) / np.std(estimates, ddof=1) < 1.6, (
      errors, estimates)
  # Pure noise: the signal estimate is centred on zero, not on the noise.
  noise_only = [retriever_gradient.signal_to_noise(
      _chunk_sums(rng, np.zeros(dim), sigma, sizes))[0] for _ in range(12)]
  assert abs(np.mean(noise_only)) < 0.1 * truth


def test_batch_cosine_matches_sampled_batches():
  rng = np.random.default_rng(1)
  dim, sigma = 20_000, 1.0
  mu = rng.normal(size=dim) * 0.05
  r = float(mu @ mu) / (dim * sigma ** 2)
  for batch in (4, 64, 1024):
    sampled = [retriever_gradient.cos(
        mu + sigma * rng.normal(size=dim) / np.sqrt(batch), mu)
               for _ in range(20)]
    assert abs(np.mean(sampled) - retriever_gradient.batch_cosine(r, batch)
               ) < 0.03, batch
  assert retriever_gradient.batch_cosine(-1e-3, 8) == 0.0
