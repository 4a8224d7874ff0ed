r"""realm-index-builder --config=configs/index_builder.py:tiny --workdir=/tmp/realm

The asynchronous index builder: whenever WORKDIR/checkpoints has a step newer
than the newest index, re-embed every block of WORKDIR/corpus with that
step's document tower and publish a MIPS index under WORKDIR/index (see
WORKSPACE.md). Runs beside the trainer (on a pod: on its own slice) until
the trainer writes WORKDIR/TRAINING_DONE; `--once` builds one index and
exits. The tower's architecture is read from WORKDIR/config.json (written by
the trainer), so only builder settings live here. Variants tiny / base /
large differ in batch and chunk sizes.
"""
import ml_collections

from realm_jax import config_lib
from realm_jax.retrieval import mips


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  if arg not in ('tiny', 'base', 'large'):
    raise ValueError(f'unknown variant {arg!r}; one of tiny, base, large')
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()
  config.corpus_dir = ''  # '' = WORKDIR/corpus
  # Reference: predict_batch_size=256 (realm/refresh_doc_embeds.py).
  config.embed_batch_size = 64 if tiny else 256
  # Embeddings are written in chunks of this many blocks; a restarted
  # builder skips finished chunks.
  config.chunk_blocks = 512 if tiny else 262_144
  config.index = mips.index_config()
  # Build and publish version N on a host thread while the devices embed
  # the next checkpoint (a refresh costs max(embed, host part), not the sum).
  config.overlap_publish = True
  config.poll_seconds = 2.0 if tiny else 30.0
  config.keep_versions = 3  # as realm/refresh_doc_embeds.py
  # A version an index handle reported serving within this time is kept.
  config.lease_ttl_seconds = 3600.0
  # Multi-host: how long process 0 waits for the other hosts' chunks.
  config.wait_for_hosts_seconds = 3600.0
  config.mesh = config_lib.mesh_config()
  config.axis_rules = config_lib.AXIS_RULES
  config.lock()
  return config
