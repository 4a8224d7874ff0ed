r"""Index builder cost vs corpus size: does one refresh grow linearly?

  JAX_PLATFORMS=cpu .venv/bin/python bench/builder_scaling.py

One refresh of the index builder is: embed every block (document tower,
tiny here) and write the chunks -> read them back -> build the MIPS index
-> publish (save, checksum, verify, rename). This times each stage for
corpora of 100k, 300k and 1M blocks and prints the per-block cost, as a
ratio to the smallest corpus: flat ratios = linear growth.

What is measured how (a 1M-block tiny-tower embed alone would take ~50 min
on this shared 2-core machine):
- Embedding is measured on a prepared synthetic corpus of --embed_blocks
  blocks (REALM's 288-token layout, embedding.embed_blocks + write_chunk
  exactly as the builder calls them), at three sample sizes in the same
  1 : 3 : 10 proportion as the corpora. Its cost is per batch of fixed shape
  (every batch is padded to one shape), so per-block cost is flat by
  construction; the samples check that nothing else (reading, chunk
  writes) grows faster. The full-size embed time is the per-block cost of
  the largest sample times the corpus size (stated as projected).
- Reading the chunks back, building the index and publishing are measured
  at the full sizes, on the sample's real embeddings tiled to the corpus
  size with a little noise (so ScaNN's k-means sees clustered data, not
  uniform noise).
"""
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from realm_jax.jobs import prepare_corpus
from realm_jax import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
_SIZES = flags.DEFINE_list('sizes', ['100000', '300000', '1000000'],
                           'Corpus sizes (blocks) for read + build + publish.')
_EMBED_BLOCKS = flags.DEFINE_integer(
    'embed_blocks', 20_000, 'Largest embedding sample; the others are 1/10 '
    'and 3/10 of it (the corpora proportions).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Embed batch size.')
_CHUNK_BLOCKS = flags.DEFINE_integer('chunk_blocks', 262_144,
                                     'Blocks per chunk file (the base config).')
_KINDS = flags.DEFINE_list('kinds', ['scann', 'exact'], 'Index kinds.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Scratch folder (default: a '
                               'temporary one, deleted after).')


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def synthetic_corpus(workdir: pathlib.Path, blocks: int) -> corpus_lib.Corpus:
  """A prepared corpus of about `blocks` blocks (1 per synthetic doc)."""
  if not (workdir / 'corpus' / 'manifest.json').exists():
    spec = importlib.util.spec_from_file_location(
        'prepare_corpus_config', REPO / 'configs' / 'prepare_corpus.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config('tiny')
    config.input.synthetic_docs = blocks
    config.tokenizer.vocab_size = 1000
    prepare_corpus.prepare_corpus(config, str(workdir))
  return corpus_lib.Corpus(workdir / 'corpus')


def embed_stage(corpus, stop: int, out_dir: pathlib.Path) -> float:
  """Seconds to embed blocks [0, stop) and write them as the builder does."""
  out_dir.mkdir(parents=True, exist_ok=True)
  model_config = config_lib.model_config('tiny', 1000)
  mesh = sharding.make_mesh(config_lib.mesh_config(), jax.local_devices())
  graphdef, params, _ = sharding.init_model(
      lambda: embedding.create_doc_tower(model_config), mesh,
      config_lib.AXIS_RULES)
  embed_fn = embedding.make_embed_fn(graphdef, mesh, config_lib.AXIS_RULES)
  batch_sharding = sharding.batch_sharding(mesh, config_lib.AXIS_RULES)
  embedding.embed_blocks(embed_fn, params, corpus, 0, _BATCH_SIZE.value,
                         _BATCH_SIZE.value, batch_sharding)  # compile

  def run():
    for c, a in enumerate(range(0, stop, _CHUNK_BLOCKS.value)):
      b = min(a + _CHUNK_BLOCKS.value, stop)
      index_store.write_chunk(out_dir, c, embedding.embed_blocks(
          embed_fn, params, corpus, a, b, _BATCH_SIZE.value, batch_sharding))
  return timed(run)[1]


def tiled(sample: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  rows = sample[rng.integers(0, len(sample), n)]
  return (rows + 0.05 * rows.std() * rng.standard_normal(rows.shape)
          ).astype(np.float32)


def index_stages(embeddings: np.ndarray, kind: str,
                 root: pathlib.Path) -> tuple[dict[str, float], int]:
  """Seconds to read the chunks back, build the index and publish it; the
  published version's bytes."""
  building = root / 'building'
  if building.exists():
    shutil.rmtree(building)
  building.mkdir(parents=True)
  chunks = range(0, len(embeddings), _CHUNK_BLOCKS.value)
  for c, a in enumerate(chunks):
    index_store.write_chunk(building, c,
                            embeddings[a:a + _CHUNK_BLOCKS.value])
  loaded, read_s = timed(lambda: index_store.read_chunks(
      building, range(len(chunks))))
  config = mips.index_config()
  config.kind = kind
  index, build_s = timed(lambda: mips.build_index(
      loaded, config, devices=jax.local_devices()))
  store = index_store.IndexStore(root / 'index')
  step = len(store.versions())
  _, publish_s = timed(lambda: store.publish(step, index, loaded[:16], {}))
  version = store.version_dir(index_store.version_name(step))
  size = sum(f.stat().st_size for f in pathlib.Path(version).rglob('*')
             if f.is_file())
  shutil.rmtree(version)
  return dict(read=read_s, build=build_s, publish=publish_s), size


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='scaling_'))
  try:
    largest = _EMBED_BLOCKS.value
    corpus = synthetic_corpus(root / 'corpus_wd', largest)
    # Whole batches: a padded last batch would cost the small samples more.
    samples = [n // _BATCH_SIZE.value * _BATCH_SIZE.value for n in (
        largest // 10, 3 * largest // 10, min(largest, len(corpus)))]
    print(f'Embedding (tiny tower, batch {_BATCH_SIZE.value}, '
          f'{jax.local_device_count()} device(s)) on the first n blocks of a '
          f'{len(corpus)}-block synthetic corpus:')
    print(f'{"n":>8} {"seconds":>9} {"blocks/s":>9} {"us/block":>9} '
          f'{"ratio":>6}')
    embed_us = []
    for n in samples:
      seconds = embed_stage(corpus, n, root / f'embed_{n}')
      embed_us.append(1e6 * seconds / n)
      print(f'{n:8d} {seconds:9.2f} {n / seconds:9.1f} {embed_us[-1]:9.1f} '
            f'{embed_us[-1] / embed_us[0]:6.2f}')
    sample = index_store.read_chunks(root / f'embed_{samples[-1]}', range(
        -(-samples[-1] // _CHUNK_BLOCKS.value)))
    per_block_embed = embed_us[-1] / 1e6

    for kind in _KINDS.value:
      print(f'\nOne refresh, index kind {kind} (embed projected from '
            f'{1e6 * per_block_embed:.0f} us/block; read, build, publish '
            'measured at full size):')
      print(f'{"blocks":>9} {"embed s":>9} {"read s":>7} {"build s":>8} '
            f'{"publish s":>9} {"total s":>9} {"us/block":>9} {"ratio":>6} '
            f'{"index-only us/block":>20} {"ratio":>6} {"bytes/block":>12}')
      first = None
      for n in map(int, _SIZES.value):
        stages, size = index_stages(tiled(sample, n), kind, root / kind)
        index_s = sum(stages.values())
        total = n * per_block_embed + index_s
        row = (1e6 * total / n, 1e6 * index_s / n)
        first = first or row
        print(f'{n:9d} {n * per_block_embed:9.0f} {stages["read"]:7.2f} '
              f'{stages["build"]:8.2f} {stages["publish"]:9.2f} '
              f'{total:9.0f} {row[0]:9.1f} {row[0] / first[0]:6.3f} '
              f'{row[1]:20.2f} {row[1] / first[1]:6.2f} {size / n:12.1f}')
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.exit(app.run(main))
