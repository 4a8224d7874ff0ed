"""A released open-QA model as a realm_jax workdir (`realm-import`).

Two layouts of the released models become what realm-finetune leaves
behind, so realm-answer and realm-evaluate read them as a fine-tuned run:

hf:DIR  google/realm-orqa-{nq,wq}-openqa (Hugging Face layout: config.json,
        pytorch_model.bin with the question embedder, the reader and
        block_emb, vocab.txt, block_records.npy): `import_open_qa`.

tf:DIR  the reference's own artefacts (TF1 checkpoints, TFRecord files;
        read without TensorFlow): `import_tf_open_qa`. DIR holds

          model.ckpt-*.index, model.ckpt-*.data-*   the ORQA model (one)
          encoded.ckpt.index, encoded.ckpt.data-*   block_emb
          blocks.tfr                                the block texts
          titles.tfr      (optional)                their titles
          vocab.txt                                 the uncased WordPiece
                                                    vocabulary
          config.json     (optional)                RealmConfig fields for a
                                                    model of other sizes

        fetched with (orqa_wq_model_from_realm for WebQuestions):

          gsutil cp 'gs://realm-data/orqa_nq_model_from_realm/export/best_default/checkpoint/model.ckpt-300000.*' DIR/
          gsutil cp 'gs://realm-data/cc_news_pretrained/embedder/encoded/encoded.ckpt.*' DIR/
          gsutil cp gs://realm-data/cc_news_pretrained/embedder/assets/vocab.txt DIR/
          gsutil cp gs://orqa-data/enwiki-20181220/blocks.tfr gs://orqa-data/enwiki-20181220/titles.tfr DIR/

        and, for the document tower (--embedder=EMBEDDER_DIR):

          gsutil cp -r gs://realm-data/cc_news_pretrained/embedder/variables EMBEDDER_DIR/

The workdir:

    WORKDIR/
      checkpoints/0/   the imported params (models.REALM, separate towers)
      corpus/          block i = record i (block_records.write_corpus):
                       its text as released, its title from titles.tfr
                       (none in block_records.npy); the reader reads the
                       body only, the document tower [CLS] title [SEP] body
                       [SEP] as ORQA's encode_blocks did
      index/step-00000000/
                       block_emb as an ordinary published version (LATEST)
      config.json      what a fine-tuning run records; written last
      TRAINING_DONE    no newer checkpoint will come (the index builder
                       has nothing to do)

The open-QA model holds no document tower (block_emb was computed by the
cc_news pretrained embedder): it comes from `embedder` (a RealmEmbedder
checkpoint directory for hf:, the embedder's TF checkpoint or TF-Hub module
directory for tf:) when given, else is a copy of the question tower.
Answering never runs it (the index is block_emb either way); fine-tuning
from this workdir or embedding another corpus with it does.

Every part is written atomically and records the inputs it came from
(`source`: their paths, sizes and modification times, and the settings
block_len and index_kind): a killed import leaves no config.json, and a
rerun keeps the finished parts, resumes block_emb's copy at its last
finished chunk and redoes the rest. Parts from other inputs are an error
unless `overwrite`, which deletes them.

The cc_news pre-trained models become what a realm_jax run realm-pretrain
starts from leaves behind (`import_init`, `import_tf_init`; no corpus, no
index): a RealmEmbedder (google/realm-cc-news-pretrained-embedder, or
gs://realm-data/cc_news_pretrained/embedder/variables) a realm-ict run's
checkpoint, params {'retriever': {'doc_tower'}}, for `--config.init_from`;
a RealmKnowledgeAugEncoder (google/realm-cc-news-pretrained-encoder, or
gs://realm-data/cc_news_pretrained/bert/variables) a realm-mlm run's,
params {'reader': {'encoder', 'mlm_head', 'span_head' (fresh)}}, for
`--config.init.reader_from`:

    WORKDIR/
      checkpoints/0/   the imported params
      vocab.txt        the checkpoint's WordPiece vocabulary: the corpus of
                       the run started from it must be tokenized with it
      config.json      `model`: the checkpoint's architecture; written last
      TRAINING_DONE

`import_hf` and `import_tf` (realm-import) choose by the architecture.

Memory: block_emb stays memory-mapped (torch.load(mmap=True), or the
encoded.ckpt data file) and is copied a chunk at a time; block_records.npy
and blocks.tfr are streamed (a batch of records in memory); building and
publishing the index holds it as any index build does.
"""
from collections.abc import Callable
import hashlib
import json
import pathlib
import shutil
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from realm_jax import bert_import
from realm_jax import block_records as block_records_lib
from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax import realm_import
from realm_jax import tf_checkpoint
from realm_jax import tf_realm_import
from realm_jax import tokenization
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace

VOCAB_FILE = 'vocab.txt'
# The tf: layout (see the module docstring).
TF_MODEL_PATTERN = 'model.ckpt*.index'
TF_BLOCK_EMB = 'encoded.ckpt'
TF_BLOCKS_FILE = 'blocks.tfr'
TF_TITLES_FILE = 'titles.tfr'
# Word pieces of a title kept (config_lib's lengths.max_title_len).
MAX_TITLE_LEN = 32
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
# The step of the imported checkpoint and of the index built from it.
IMPORT_STEP = 0
# block_emb rows copied between two progress records (64 MB of float32).
CHUNK_ROWS = 1 << 17
# block_emb's copy under index/building/step-00000000/, and its progress.
_ROWS_FILE = 'block_emb.npy'
_PROGRESS_FILE = 'block_emb.progress.json'
# What `overwrite` deletes: the parts this import writes, nothing else.
_PARTS = ('config.json', workspace.TRAINING_DONE, 'checkpoints', 'corpus',
          'corpus.tmp', 'corpus.old', 'index', VOCAB_FILE)
# The pre-training inits: the params a checkpoint fills (the layout of the
# run realm-pretrain otherwise starts from) and realm-pretrain's flag.
INIT_PARTS = {'RealmEmbedder': ('retriever', 'init_from'),
              'RealmKnowledgeAugEncoder': ('reader', 'init.reader_from')}
ACCEPTED = ('realm-import takes RealmForOpenQA (google/realm-orqa-nq-openqa, '
            'gs://realm-data/orqa_nq_model_from_realm: a workdir realm-answer '
            'reads), RealmEmbedder (google/realm-cc-news-pretrained-embedder, '
            'gs://realm-data/cc_news_pretrained/embedder/variables: for '
            'realm-pretrain --config.init_from) or RealmKnowledgeAugEncoder '
            '(google/realm-cc-news-pretrained-encoder, gs://realm-data/'
            'cc_news_pretrained/bert/variables: for realm-pretrain '
            '--config.init.reader_from)')


def _file(directory: pathlib.Path, name: str, what: str) -> pathlib.Path:
  path = directory / name
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: {what}')
  return path


def _stamp(path: pathlib.Path) -> dict[str, Any]:
  stat = path.stat()
  return dict(path=str(path.resolve()), bytes=stat.st_size,
              mtime_ns=stat.st_mtime_ns)


def _weights_file(directory: pathlib.Path) -> pathlib.Path:
  """The file realm_import reads: model.safetensors, else the .bin."""
  for name in (bert_import.WEIGHTS_FILE, realm_import.TORCH_WEIGHTS_FILE):
    if (directory / name).is_file():
      return directory / name
  raise FileNotFoundError(f'{directory}: no {bert_import.WEIGHTS_FILE} or '
                          f'{realm_import.TORCH_WEIGHTS_FILE}')


def check_inputs(checkpoint_dir: pathlib.Path,
                 embedder_dir: pathlib.Path | None) -> dict[str, Any]:
  """Fails naming a missing input file; returns the stamp of every input
  the workdir's parts are made from."""
  if not checkpoint_dir.is_dir():
    raise FileNotFoundError(f'{checkpoint_dir}: no such checkpoint directory')
  hf_config = _file(checkpoint_dir, bert_import.CONFIG_FILE,
                    'not a Hugging Face checkpoint')
  source = dict(
      config=_stamp(hf_config),
      weights=_stamp(_weights_file(checkpoint_dir)),
      vocab=_stamp(_file(checkpoint_dir, VOCAB_FILE,
                         'the WordPiece vocabulary of the checkpoint')),
      block_records=_stamp(_file(
          checkpoint_dir, block_records_lib.FILE_NAME,
          'the texts of the blocks block_emb embeds (the full open-QA repos '
          'hold it)')),
      embedder=None)
  if embedder_dir is not None:
    source['embedder'] = dict(
        config=_stamp(_file(embedder_dir, bert_import.CONFIG_FILE,
                            'not a Hugging Face checkpoint')),
        weights=_stamp(_weights_file(embedder_dir)))
  return source


def _tf_checkpoint_stamp(prefix: pathlib.Path, what: str) -> dict[str, Any]:
  """The stamps of a TF checkpoint's index and data files."""
  index = _file(prefix.parent, f'{prefix.name}.index', what)
  data = sorted(prefix.parent.glob(f'{prefix.name}.data-*-of-*'))
  if not data:
    raise FileNotFoundError(f'{prefix}.data-00000-of-00001 not found: the '
                            f'data of {index}')
  return dict(index=_stamp(index), data=[_stamp(path) for path in data])


def tf_model_prefix(tf_dir: pathlib.Path) -> pathlib.Path:
  """The ORQA checkpoint of a tf: directory: its one model.ckpt*.index."""
  found = sorted(tf_dir.glob(TF_MODEL_PATTERN))
  if len(found) != 1:
    raise FileNotFoundError(
        f'{tf_dir}: {len(found)} files {TF_MODEL_PATTERN} '
        f'({", ".join(p.name for p in found) or "none"}); put the one ORQA '
        'model checkpoint there (orqa_nq_model_from_realm/export/'
        'best_default/checkpoint/model.ckpt-300000.*)')
  return tf_realm_import.checkpoint_prefix(found[0])


def check_tf_inputs(tf_dir: pathlib.Path,
                    embedder: pathlib.Path | None) -> dict[str, Any]:
  """check_inputs of a tf: directory (see the module docstring)."""
  if not tf_dir.is_dir():
    raise FileNotFoundError(f'{tf_dir}: no such directory')
  optional = {name: _stamp(tf_dir / name) if (tf_dir / name).is_file()
              else None
              for name in (TF_TITLES_FILE, bert_import.CONFIG_FILE)}
  source = dict(
      model=_tf_checkpoint_stamp(tf_model_prefix(tf_dir), 'the ORQA model'),
      block_emb=_tf_checkpoint_stamp(
          tf_dir / TF_BLOCK_EMB,
          'the block embeddings (cc_news_pretrained/embedder/encoded/'
          'encoded.ckpt.*)'),
      vocab=_stamp(_file(tf_dir, VOCAB_FILE,
                         'the WordPiece vocabulary of the model')),
      blocks=_stamp(_file(tf_dir, TF_BLOCKS_FILE,
                          'the texts of the blocks block_emb embeds '
                          '(gs://orqa-data/enwiki-20181220/blocks.tfr)')),
      titles=optional[TF_TITLES_FILE],
      config=optional[bert_import.CONFIG_FILE],
      embedder=None)
  if embedder is not None:
    prefix = tf_realm_import.checkpoint_prefix(embedder)
    source['embedder'] = _tf_checkpoint_stamp(
        prefix, 'the embedder checkpoint (cc_news_pretrained/embedder/'
        'variables/variables.*)')
  return source


def _check_tokenizer(checkpoint_dir: pathlib.Path, tokenizer,
                     model_config) -> None:
  """Our WordPiece tokenizer lowercases (as the released checkpoints'), and
  its ids must be rows of the model's embeddings."""
  config_path = checkpoint_dir / TOKENIZER_CONFIG_FILE
  if config_path.is_file():
    lowercase = json.loads(config_path.read_text()).get('do_lower_case', True)
    if not lowercase:
      raise ValueError(f'{config_path}: do_lower_case is false; realm_jax\'s '
                       'WordPiece tokenizer of a corpus lowercases')
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f'{checkpoint_dir / VOCAB_FILE}: {tokenizer.vocab_size} '
                     f'word pieces, the model embeds {model_config.vocab_size}')


def open_qa_params(checkpoint: realm_import.RealmCheckpoint,
                   embedder: realm_import.RealmCheckpoint | None,
                   embedder_name: str = '') -> dict[str, Any]:
  """models.REALM params (separate towers, float32 numpy) of an imported
  open-QA model: its question tower and reader; the document tower from
  the imported `embedder` (named `embedder_name`), else the question
  tower's copy."""
  model_config = models.with_separate_towers(checkpoint.model_config)
  params = nnx.to_pure_dict(nnx.state(models.REALM(model_config,
                                                   rngs=nnx.Rngs(0))))
  if embedder is not None:
    if embedder.architecture != 'RealmEmbedder':
      raise ValueError(f'{embedder_name}: a {embedder.architecture}; '
                       '--embedder takes the embedder that computed '
                       'block_emb (google/realm-cc-news-pretrained-embedder, '
                       'gs://realm-data/cc_news_pretrained/embedder)')
    # It fills every tower; the open-QA checkpoint then the question tower.
    params = realm_import.init_from_realm(params, model_config, embedder)
  params = realm_import.init_from_realm(params, model_config, checkpoint)
  retriever = params['retriever']
  if embedder is None:
    logging.info('The document tower is a copy of the question tower: an '
                 'open-QA checkpoint has none (pass --embedder, the '
                 'embedder that computed block_emb, for it). Answering does '
                 'not use it: the index is block_emb.')
    retriever = dict(retriever, doc_tower=retriever['query_tower'])
  else:
    logging.info('The document tower is %s\'s embedder', embedder_name)
  return dict(params, retriever=retriever)


def _committed_checkpoint_source(directory: epath.Path) -> dict | None | bool:
  """The `source` the imported checkpoint records; False if none exists."""
  if not directory.exists():
    return False
  manager = checkpointing.make_manager(directory, read_only=True)
  step = manager.latest_step()
  if step is None:
    return False
  return manager.restore(step, args=ocp.args.Composite(
      data=ocp.args.JsonRestore())).data.get('imported_from')


def save_checkpoint(workdir: epath.Path, params: dict[str, Any],
                    source: dict[str, Any]) -> None:
  """The params as checkpoint IMPORT_STEP, as a trainer saves its state
  (orbax commits a step only once it is complete); the data item records
  the source."""
  config = checkpointing.checkpoint_config(every_steps=1)
  config.async_save = False
  manager = checkpointing.make_manager(workdir / 'checkpoints', config)
  state = dict(step=jnp.int32(IMPORT_STEP),
               params=jax.tree.map(jnp.asarray, params))
  checkpointing.save(manager, IMPORT_STEP, state,
                     dict(next_step=IMPORT_STEP, imported_from=source),
                     force=True)
  manager.wait_until_finished()
  manager.close()


def _resumed_rows(building: epath.Path, shape, source) -> int:
  """Rows of block_emb a killed import copied already (0: start over)."""
  try:
    progress = json.loads((building / _PROGRESS_FILE).read_text())
    rows = np.load(building / _ROWS_FILE, mmap_mode='r')
  except (FileNotFoundError, ValueError):
    return 0
  if progress.get('source') != source or rows.shape != tuple(shape):
    return 0
  return int(progress['rows'])


def copy_block_emb(building: epath.Path, block_emb: np.ndarray,
                   source: dict[str, Any],
                   chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
  """block_emb copied into building/block_emb.npy chunk by chunk (one
  chunk in memory; block_emb itself stays memory-mapped), each chunk's end
  recorded once it is on disk, so a rerun continues after the last one.
  Returns the copy, memory-mapped."""
  building.mkdir(parents=True, exist_ok=True)
  done = _resumed_rows(building, block_emb.shape, source)
  rows = np.lib.format.open_memmap(
      building / _ROWS_FILE, mode='r+' if done else 'w+', dtype=np.float32,
      shape=block_emb.shape)
  if done:
    logging.info('Resuming block_emb\'s copy at row %d', done)
  with tqdm.tqdm(total=len(block_emb), initial=done, unit=' rows',
                 desc='block_emb', mininterval=1) as bar:
    for start in range(done, len(block_emb), chunk_rows):
      stop = min(start + chunk_rows, len(block_emb))
      rows[start:stop] = block_emb[start:stop]
      rows.flush()
      index_store.atomic_write_text(building / _PROGRESS_FILE, json.dumps(
          dict(rows=stop, source=source)))
      bar.update(stop - start)
  del rows
  return np.load(building / _ROWS_FILE, mmap_mode='r')


def publish_block_emb(workdir: epath.Path, block_emb: np.ndarray,
                      corpus_manifest: dict[str, Any], source: dict[str, Any],
                      index_config: ml_collections.ConfigDict,
                      chunk_rows: int = CHUNK_ROWS) -> None:
  """block_emb as index version IMPORT_STEP, published as the index builder
  publishes (verified, committed, then LATEST)."""
  store = index_store.IndexStore(workdir / 'index')
  building = store.building_dir(IMPORT_STEP)
  vectors = copy_block_emb(building, block_emb, source, chunk_rows)
  # The search structure needs every vector at once (as any index build).
  index = mips.build_index(vectors, index_config,
                           devices=jax.local_devices())
  store.publish(IMPORT_STEP, index, np.asarray(vectors[:16]), dict(
      imported_from=source,
      corpus_fingerprint=corpus_manifest['source'].get('fingerprint'),
      tokenizer_sha256=corpus_manifest['tokenizer']['sha256']))


def workdir_config(checkpoint: realm_import.RealmCheckpoint,
                   corpus_dir: epath.Path, source: dict[str, Any]
                   ) -> ml_collections.ConfigDict:
  """config.json: the fields of a fine-tuning run's that prediction,
  evaluation and a run started from this one read, at the checkpoint's
  settings (RealmConfig's defaults where config.json omits them)."""
  hf = checkpoint.hf_config
  return ml_collections.ConfigDict(dict(
      model=models.with_separate_towers(checkpoint.model_config).to_dict(),
      corpus_dir=str(corpus_dir),
      closed_book=False,
      retrieval='dense',
      regex_answers=False,
      retriever_beam_size=int(hf.get('searcher_beam_size', 5000)),
      reader_beam_size=int(hf.get('reader_beam_size', 5)),
      lengths=dict(query_len=64,  # ORQA's question length
                   reader_len=int(hf.get('reader_seq_len', 320))),
      mesh=config_lib.mesh_config().to_dict(),
      axis_rules=config_lib.AXIS_RULES,
      imported_from=source))


def _check_part(path, recorded, source, name: str) -> bool:
  """True if the part exists from these inputs; an error if from others."""
  if recorded is False:
    return False
  if recorded != source:
    raise FileExistsError(f'{path} holds the {name} of another import (or '
                          'another run); pass --overwrite to replace the '
                          'imported parts of the workdir')
  logging.info('Keeping %s (imported from these files before)', path)
  return True


def _settings(source, block_len, index_kind) -> dict[str, Any]:
  """The source with the settings that shape the parts too; JSON types,
  as the parts record them."""
  return json.loads(json.dumps(dict(
      source, settings=dict(block_len=block_len, index_kind=index_kind))))


def _check_open_qa(checkpoint, where, block_len, num_records,
                   records_path) -> None:
  if checkpoint.architecture != 'RealmForOpenQA':
    raise ValueError(f'{where}: a {checkpoint.architecture}; {ACCEPTED}')
  if not 3 < block_len <= checkpoint.model_config.max_position_embeddings:
    raise ValueError(f'block_len {block_len}: must be in [4, '
                     f'{checkpoint.model_config.max_position_embeddings}]')
  if not num_records:
    raise ValueError(f'{records_path} holds no records')
  if num_records != len(checkpoint.block_emb):
    raise ValueError(
        f'{records_path} holds {num_records} records, the tensor block_emb '
        f'of {where} {len(checkpoint.block_emb)} rows: each record is the '
        'text of one row')


def import_open_qa(checkpoint_dir: str, workdir: str, *,
                   embedder_dir: str | None = None,
                   index_kind: str = 'auto', block_len: int = 288,
                   shard_size: int = 100_000, overwrite: bool = False,
                   chunk_rows: int = CHUNK_ROWS) -> ml_collections.ConfigDict:
  """Makes `workdir` from a RealmForOpenQA checkpoint directory (hf:, see
  the module docstring); returns its config. `index_kind`:
  mips.index_config's kind ('exact' searches as transformers'
  RealmForOpenQA does)."""
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  embedder_dir = pathlib.Path(embedder_dir) if embedder_dir else None
  source = _settings(check_inputs(checkpoint_dir, embedder_dir), block_len,
                     index_kind)
  records_path = checkpoint_dir / block_records_lib.FILE_NAME
  checkpoint = realm_import.import_realm_checkpoint(checkpoint_dir)
  num_records = block_records_lib.num_block_records(records_path)
  _check_open_qa(checkpoint, _weights_file(checkpoint_dir), block_len,
                 num_records, records_path)

  def params():
    embedder = (realm_import.import_realm_checkpoint(embedder_dir)
                if embedder_dir else None)
    return open_qa_params(checkpoint, embedder,
                          str(embedder_dir / bert_import.CONFIG_FILE)
                          if embedder_dir else '')

  def write_corpus(corpus_dir, tokenizer):
    records = block_records_lib.BlockRecords(records_path)
    return block_records_lib.write_corpus(
        corpus_dir, records, num_records, tokenizer,
        checkpoint_dir / VOCAB_FILE, block_len=block_len,
        shard_size=shard_size,
        source=lambda: dict(format='block_records',
                            path=str(records_path.resolve()),
                            fingerprint=records.fingerprint, inputs=source),
        records_path=records_path)

  return _make_workdir(
      epath.Path(workdir), checkpoint_dir, checkpoint, source, params,
      write_corpus, index_kind=index_kind, overwrite=overwrite,
      chunk_rows=chunk_rows)


def import_tf_open_qa(tf_dir: str, workdir: str, *,
                      embedder: str | None = None, index_kind: str = 'auto',
                      block_len: int = 288, shard_size: int = 100_000,
                      overwrite: bool = False, chunk_rows: int = CHUNK_ROWS
                      ) -> ml_collections.ConfigDict:
  """Makes `workdir` from the reference's TF artefacts in `tf_dir` (tf:,
  see the module docstring); `embedder`: the embedder's TF checkpoint
  (prefix, .index or TF-Hub module directory). As import_open_qa."""
  tf_dir = pathlib.Path(tf_dir)
  embedder = pathlib.Path(embedder) if embedder else None
  source = _settings(check_tf_inputs(tf_dir, embedder), block_len,
                     index_kind)
  tf_checkpoint.log_missing_crc32c()
  # config.json, if any, describes the embedder's BERT too.
  config_path = tf_dir / bert_import.CONFIG_FILE
  config_path = config_path if config_path.is_file() else None
  checkpoint = tf_realm_import.import_tf_checkpoint(
      tf_model_prefix(tf_dir), config=config_path,
      block_emb=tf_dir / TF_BLOCK_EMB)
  blocks_path, titles_path = tf_dir / TF_BLOCKS_FILE, tf_dir / TF_TITLES_FILE
  num_records = tf_checkpoint.count_tfrecords(blocks_path)
  _check_open_qa(checkpoint, f'{tf_dir / TF_BLOCK_EMB}.index', block_len,
                 num_records, blocks_path)
  has_titles = titles_path.is_file()
  if has_titles and tf_checkpoint.count_tfrecords(titles_path) != num_records:
    raise ValueError(f'{titles_path} holds '
                     f'{tf_checkpoint.count_tfrecords(titles_path)} titles, '
                     f'{blocks_path} {num_records} blocks')

  def params():
    embedded = (tf_realm_import.import_tf_checkpoint(embedder,
                                                     config=config_path)
                if embedder else None)
    return open_qa_params(checkpoint, embedded, str(embedder or ''))

  def write_corpus(corpus_dir, tokenizer):
    # The files' stamps identify the texts (hashing 13 GB would not more).
    fingerprint = hashlib.sha256(json.dumps(
        [source['blocks'], source['titles']]).encode()).hexdigest()
    return block_records_lib.write_corpus(
        corpus_dir, tf_checkpoint.read_tfrecords(blocks_path), num_records,
        tokenizer, tf_dir / VOCAB_FILE, block_len=block_len,
        shard_size=shard_size,
        source=dict(format='tfrecord', path=str(blocks_path.resolve()),
                    fingerprint=f'stamps-sha256:{fingerprint}',
                    inputs=source),
        records_path=blocks_path,
        titles=(tf_checkpoint.read_tfrecords(titles_path) if has_titles
                else None),
        titles_path=titles_path, max_title_len=MAX_TITLE_LEN)

  return _make_workdir(
      epath.Path(workdir), tf_dir, checkpoint, source, params, write_corpus,
      index_kind=index_kind, overwrite=overwrite, chunk_rows=chunk_rows)


def _start_workdir(workdir: epath.Path, source: dict[str, Any],
                   overwrite: bool) -> epath.Path:
  """Deletes the imported parts when `overwrite`, else checks that a
  config.json is of these inputs; returns its path."""
  if overwrite:
    for name in _PARTS:
      path = pathlib.Path(workdir / name)
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()
  config_path = workdir / workspace.CONFIG_FILE
  if config_path.exists():
    _check_part(config_path, json.loads(config_path.read_text()).get(
        'imported_from'), source, 'config')
  workdir.mkdir(parents=True, exist_ok=True)
  return config_path


def _save_checkpoint_part(workdir: epath.Path,
                          params: Callable[[], dict[str, Any]],
                          source: dict[str, Any]) -> None:
  checkpoints = workdir / 'checkpoints'
  if not _check_part(checkpoints, _committed_checkpoint_source(checkpoints),
                     source, 'checkpoint'):
    save_checkpoint(workdir, params(), source)


def _make_workdir(workdir: epath.Path, model_dir: pathlib.Path,
                  checkpoint: realm_import.RealmCheckpoint,
                  source: dict[str, Any],
                  params: Callable[[], dict[str, Any]],
                  write_corpus: Callable[..., dict[str, Any]], *,
                  index_kind: str, overwrite: bool, chunk_rows: int
                  ) -> ml_collections.ConfigDict:
  """The parts of the workdir not yet made from `source`: the checkpoint
  (`params()`), the corpus (`write_corpus(corpus_dir, tokenizer)`, its
  manifest), block_emb's index, then config.json."""
  if corpus_lib.is_remote(workdir):
    raise ValueError(f'{workdir}: import into a local workdir, then copy it')
  tokenizer = tokenization.load_tokenizer(model_dir / VOCAB_FILE)
  _check_tokenizer(model_dir, tokenizer, checkpoint.model_config)
  index_config = mips.index_config()
  index_config.kind = index_kind
  mips.validate_config(index_config)

  config_path = _start_workdir(workdir, source, overwrite)
  _save_checkpoint_part(workdir, params, source)

  corpus_dir = workdir / 'corpus'
  corpus_manifest = (corpus_lib.Corpus(corpus_dir).manifest
                     if corpus_lib.is_committed(corpus_dir) else None)
  recorded = corpus_manifest is not None and corpus_manifest['source'].get(
      'inputs')
  if not _check_part(corpus_dir, recorded, source, 'corpus'):
    corpus_manifest = write_corpus(corpus_dir, tokenizer)

  store = index_store.IndexStore(workdir / 'index')
  version = index_store.version_name(IMPORT_STEP)
  recorded = store.is_committed(version) and store.read_manifest(
      version).get('imported_from')
  # Committed but not yet LATEST (killed in between): publish flips it.
  if not (_check_part(store.version_dir(version), recorded, source, 'index')
          and store.latest_step() == IMPORT_STEP):
    publish_block_emb(workdir, checkpoint.block_emb, corpus_manifest, source,
                      index_config, chunk_rows)
  store.delete_finished_builds(IMPORT_STEP)

  config = workdir_config(checkpoint, corpus_dir, source)
  # The commit of the whole import: realm-answer needs config.json.
  index_store.atomic_write_text(config_path,
                                config.to_json_best_effort(indent=2))
  workspace.finish_job(workdir)
  logging.info('Imported %s into %s: %d blocks; answer with realm-answer '
               '--workdir=%s "a question"', model_dir, workdir,
               corpus_manifest['num_blocks'], workdir)
  return config


def _check_init(architecture: str, where) -> None:
  if architecture not in INIT_PARTS:
    raise ValueError(f'{where}: a {architecture}; {ACCEPTED}')


def init_params(checkpoint: realm_import.RealmCheckpoint) -> dict[str, Any]:
  """The params a realm-ict run (embedder) or a realm-mlm run (encoder)
  saves, filled from the checkpoint (the encoder's span head stays fresh,
  as an MLM run's)."""
  part, _ = INIT_PARTS[checkpoint.architecture]
  model = (models.RetrieverModel if part == 'retriever'
           else models.ReaderModel)(checkpoint.model_config, rngs=nnx.Rngs(0))
  return realm_import.init_from_realm(nnx.to_pure_dict(nnx.state(model)),
                                      checkpoint.model_config, checkpoint)


def pretrain_flags(model_config: ml_collections.ConfigDict,
                   architecture: str) -> list[str]:
  """realm-pretrain's model flags (from configs/pretrain.py:base) for the
  fields its check of this init compares."""
  part, _ = INIT_PARTS[architecture]
  fields = (workspace.READER_FIELDS if part == 'reader'
            else (*workspace.PARAMETER_FIELDS, 'share_towers'))
  base = config_lib.model_config('base', vocab_size=30522)
  return [f'--config.model.{field}={model_config[field]}' for field in fields
          if model_config[field] != base[field]]


def _make_init_workdir(workdir: epath.Path,
                       checkpoint: realm_import.RealmCheckpoint,
                       source: dict[str, Any], vocab: pathlib.Path, *,
                       overwrite: bool) -> ml_collections.ConfigDict:
  """The checkpoint (init_params), vocab.txt, then config.json."""
  if corpus_lib.is_remote(workdir):
    raise ValueError(f'{workdir}: import into a local workdir, then copy it')
  _check_tokenizer(vocab.parent, tokenization.load_tokenizer(vocab),
                   checkpoint.model_config)
  config_path = _start_workdir(workdir, source, overwrite)
  _save_checkpoint_part(workdir, lambda: init_params(checkpoint), source)
  index_store.atomic_write_text(workdir / VOCAB_FILE, vocab.read_text())
  config = ml_collections.ConfigDict(dict(
      model=checkpoint.model_config.to_dict(),
      architecture=checkpoint.architecture, imported_from=source))
  # The commit of the whole import: realm-pretrain reads config.json.
  index_store.atomic_write_text(config_path,
                                config.to_json_best_effort(indent=2))
  workspace.finish_job(workdir)
  _, flag = INIT_PARTS[checkpoint.architecture]
  logging.info(
      'Imported the %s into %s: start realm-pretrain '
      '--config=configs/pretrain.py:base with --config.%s=%s %s. '
      'Tokenize that run\'s corpus with %s (realm-prepare-corpus '
      '--config.tokenizer.path=%s): the checkpoint\'s word embeddings are '
      'rows of that vocabulary.', checkpoint.architecture, workdir, flag,
      workdir, ' '.join(pretrain_flags(checkpoint.model_config,
                                       checkpoint.architecture)),
      workdir / VOCAB_FILE, workdir / VOCAB_FILE)
  return config


def import_init(checkpoint_dir: str, workdir: str, *,
                overwrite: bool = False) -> ml_collections.ConfigDict:
  """Makes `workdir` from a RealmEmbedder or RealmKnowledgeAugEncoder
  checkpoint directory (hf:, see the module docstring); returns its
  config."""
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  if not checkpoint_dir.is_dir():
    raise FileNotFoundError(f'{checkpoint_dir}: no such checkpoint directory')
  vocab = _file(checkpoint_dir, VOCAB_FILE,
                'the WordPiece vocabulary of the checkpoint')
  source = json.loads(json.dumps(dict(
      config=_stamp(_file(checkpoint_dir, bert_import.CONFIG_FILE,
                          'not a Hugging Face checkpoint')),
      weights=_stamp(_weights_file(checkpoint_dir)), vocab=_stamp(vocab))))
  checkpoint = realm_import.import_realm_checkpoint(checkpoint_dir)
  _check_init(checkpoint.architecture, checkpoint_dir / bert_import.CONFIG_FILE)
  return _make_init_workdir(epath.Path(workdir), checkpoint, source, vocab,
                            overwrite=overwrite)


def tf_module_prefix(tf_dir: pathlib.Path) -> pathlib.Path:
  """The checkpoint of a TF-Hub module directory (variables/variables) or
  of its variables directory (variables)."""
  for prefix in (tf_dir / 'variables' / 'variables', tf_dir / 'variables'):
    if prefix.with_name(f'{prefix.name}.index').is_file():
      return prefix
  raise FileNotFoundError(
      f'{tf_dir}: no {TF_MODEL_PATTERN} (an ORQA model), variables/'
      'variables.index or variables.index (the cc_news embedder\'s or '
      'encoder\'s: gsutil -m cp -r gs://realm-data/cc_news_pretrained/'
      'embedder/variables DIR/)')


def _tf_vocab(tf_dir: pathlib.Path) -> pathlib.Path:
  """vocab.txt in the directory, or in its TF-Hub module's assets/."""
  for path in (tf_dir / VOCAB_FILE, tf_dir / 'assets' / VOCAB_FILE):
    if path.is_file():
      return path
  raise FileNotFoundError(
      f'{tf_dir / VOCAB_FILE} not found (nor {tf_dir / "assets"}/'
      f'{VOCAB_FILE}): the WordPiece vocabulary of the model (gsutil cp '
      'gs://realm-data/cc_news_pretrained/embedder/assets/vocab.txt DIR/)')


def import_tf_init(tf_dir: str, workdir: str, *,
                   overwrite: bool = False) -> ml_collections.ConfigDict:
  """Makes `workdir` from the cc_news embedder's or encoder's TF checkpoint
  in `tf_dir` (tf_module_prefix; vocab.txt beside it or in assets/, an
  optional config.json as import_tf_open_qa's). As import_init."""
  tf_dir = pathlib.Path(tf_dir)
  prefix = tf_module_prefix(tf_dir)
  vocab = _tf_vocab(tf_dir)
  config_path = tf_dir / bert_import.CONFIG_FILE
  config_path = config_path if config_path.is_file() else None
  source = json.loads(json.dumps(dict(
      model=_tf_checkpoint_stamp(prefix, 'the module\'s variables'),
      vocab=_stamp(vocab),
      config=_stamp(config_path) if config_path else None)))
  tf_checkpoint.log_missing_crc32c()
  checkpoint = tf_realm_import.import_tf_checkpoint(prefix, config=config_path)
  _check_init(checkpoint.architecture, f'{prefix}.index')
  return _make_init_workdir(epath.Path(workdir), checkpoint, source, vocab,
                            overwrite=overwrite)


def _check_options(architecture: str, where, embedder) -> None:
  _check_init(architecture, where)
  if embedder:
    raise ValueError(f'--embedder: a {architecture} is imported alone (the '
                     'embedder is the document tower of an open-QA import)')


def import_hf(checkpoint_dir: str, workdir: str, *,
              embedder_dir: str | None = None, overwrite: bool = False,
              **open_qa) -> ml_collections.ConfigDict:
  """realm-import --from=hf:DIR: by the architecture of DIR/config.json,
  import_open_qa (`open_qa`: its options) or import_init."""
  config_path = pathlib.Path(checkpoint_dir) / bert_import.CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path} not found: not a Hugging Face '
                            'checkpoint')
  named = json.loads(config_path.read_text()).get('architectures') or []
  architecture = named[0] if len(named) == 1 else str(named)
  if architecture == 'RealmForOpenQA':
    return import_open_qa(checkpoint_dir, workdir, embedder_dir=embedder_dir,
                          overwrite=overwrite, **open_qa)
  _check_options(architecture, config_path, embedder_dir)
  return import_init(checkpoint_dir, workdir, overwrite=overwrite)


def import_tf(tf_dir: str, workdir: str, *, embedder: str | None = None,
              overwrite: bool = False, **open_qa
              ) -> ml_collections.ConfigDict:
  """realm-import --from=tf:DIR: a directory with an ORQA model.ckpt-*
  goes to import_tf_open_qa (`open_qa`: its options), a TF-Hub module of
  the cc_news embedder or encoder to import_tf_init."""
  tf_dir = pathlib.Path(tf_dir)
  if not tf_dir.is_dir():
    raise FileNotFoundError(f'{tf_dir}: no such directory')
  if any(tf_dir.glob(TF_MODEL_PATTERN)):
    return import_tf_open_qa(str(tf_dir), workdir, embedder=embedder,
                             overwrite=overwrite, **open_qa)
  prefix = tf_module_prefix(tf_dir)
  _check_options(tf_realm_import.architecture_of(
      tf_checkpoint.read_index(prefix), prefix), f'{prefix}.index', embedder)
  return import_tf_init(str(tf_dir), workdir, overwrite=overwrite)
