"""`realm-index-builder`: keeps WORKDIR/index fresh while the trainer runs.

  realm-index-builder --config=configs/index_builder.py:tiny --workdir=W

The builder itself is realm_jax/retrieval/builder.py; the protocol it
follows is realm_jax/retrieval/__init__.py (and WORKSPACE.md).
"""
from absl import flags

from realm_jax import cli
from realm_jax.retrieval import builder


def run():
  once = flags.DEFINE_bool('once', False, 'Build one index, then exit.')
  cli.run_job(lambda config, workdir: builder.build_index_loop(
      config, workdir, once.value))


if __name__ == '__main__':
  run()
