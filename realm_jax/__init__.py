"""realm_jax: REALM in JAX."""
import fsspec

# On a bucket the trainer and the builder are different processes (hosts):
# gcsfs's in-process listing cache, kept forever by default, would make an
# object another process rewrote (index/LATEST) read with its old size
# (truncated JSON) or not at all. Every gs:// access asks the bucket.
fsspec.config.conf.setdefault('gs', {}).setdefault('use_listings_cache', False)
