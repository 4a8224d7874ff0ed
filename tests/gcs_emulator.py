"""An in-memory Cloud Storage server for the gs:// tests; works offline.

`emulated_gcs()` starts gcp-storage-emulator on a free local port, in a
background thread of this process, and points the real client libraries at
it through their own emulator settings:

- STORAGE_EMULATOR_HOST: gcsfs (hence etils.epath's gs:// paths) and
  google-cloud-storage (tensorboardX's gs:// event writer) send their
  requests there. It is inherited by subprocesses (the CLI tests).
- FSSPEC_GS_TOKEN=anon (and fsspec's config for this process): no
  credentials are looked for (no metadata-server probe).
- TENSORSTORE_GCS_HTTP_URL (and GOOGLE_AUTH_TOKEN_FOR_TESTING, a dummy
  bearer token: no credentials are looked for): TensorStore's gcs driver,
  hence orbax's checkpoint arrays, sends its requests there.
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs >= 2026 otherwise asks
  the Storage Control gRPC API for each bucket's type, which the emulator
  does not serve (each call then waits out a 60 s timeout before falling
  back). gcsfs reads it when imported, so conftest.py sets it first.

gcsfs caches filesystem instances (and etils caches the one it uses) and
each instance caches directory listings in-process, so a file written by
another client (a subprocess, google-cloud-storage) can be invisible to
`exists()` after its folder was listed. `invalidate()` drops both caches;
the fixture calls it at start and end, tests call it after another process
wrote to the bucket.

The emulator's media downloads omit the `x-goog-generation` header that
Cloud Storage sends with every object read; TensorStore's gcs driver (so
orbax's OCDBT checkpoints) cannot read an object without it ("Malformed
StorageGeneration"). `_add_generation_headers()` adds it (and
`x-goog-metageneration`) to the emulator's download handler.

tensorboardX's gs:// event writer (GCSRecordWriter) uploads its buffer
again when collected, and its SummaryWriter's atexit hook keeps it alive
until interpreter exit, after the emulator is gone: each would then retry
for 120 s. At teardown that upload is turned off (in this process only).
"""
import contextlib
import os
import socket
import sys
from collections.abc import Iterator

_ENV = ('STORAGE_EMULATOR_HOST', 'FSSPEC_GS_TOKEN',
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'TENSORSTORE_GCS_HTTP_URL',
        'GOOGLE_AUTH_TOKEN_FOR_TESTING')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def invalidate() -> None:
  """Forgets cached gcsfs instances and their directory listings."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  for instance in list(gcsfs.GCSFileSystem._cache.values()):  # pylint: disable=protected-access
    instance.invalidate_cache()
  gcsfs.GCSFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def _add_generation_headers() -> None:
  """Makes the emulator's downloads carry the object's generation headers."""
  from gcp_storage_emulator import server as server_lib  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  original = objects.download
  if getattr(original, 'adds_generation_headers', False):
    return

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'],
                                 request.params['object_id'])
    except NotFound:
      pass  # the handler answers 404
    else:
      response['x-goog-generation'] = str(obj['generation'])
      response['x-goog-metageneration'] = str(obj['metageneration'])
    return original(request, response, storage, *args, **kwargs)

  download.adds_generation_headers = True
  objects.download = download  # objects.get (alt=media) looks it up here
  for _, methods in server_lib.HANDLERS:
    for method, handler in methods.items():
      if handler is original:
        methods[method] = download


@contextlib.contextmanager
def emulated_gcs() -> Iterator[str]:
  """Runs the emulator; yields its http:// address."""
  from gcp_storage_emulator import server as server_lib  # pylint: disable=g-import-not-at-top
  import fsspec  # pylint: disable=g-import-not-at-top
  _add_generation_headers()
  port = _free_port()
  server = server_lib.create_server('127.0.0.1', port, in_memory=True)
  server.start()
  saved_env = {name: os.environ.get(name) for name in _ENV}
  saved_conf = fsspec.config.conf.get('gs')
  host = f'http://127.0.0.1:{port}'
  os.environ.update(STORAGE_EMULATOR_HOST=host, FSSPEC_GS_TOKEN='anon',
                    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
                    TENSORSTORE_GCS_HTTP_URL=host,
                    GOOGLE_AUTH_TOKEN_FOR_TESTING='emulator')
  fsspec.config.conf['gs'] = dict(saved_conf or {}, token='anon')
  invalidate()  # an instance made before would talk to the real service
  try:
    yield host
  finally:
    if 'tensorboardX.record_writer' in sys.modules:
      sys.modules['tensorboardX.record_writer'].GCSRecordWriter.__del__ = (
          lambda self: None)
    invalidate()
    if saved_conf is None:
      fsspec.config.conf.pop('gs', None)
    else:
      fsspec.config.conf['gs'] = saved_conf
    for name, value in saved_env.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    server.stop()


def create_bucket(name: str) -> str:
  """Creates bucket `name` (through gcsfs); returns `gs://name`."""
  import fsspec  # pylint: disable=g-import-not-at-top
  fsspec.filesystem('gs').mkdir(name)
  return f'gs://{name}'
