"""`realm-answer`: answer questions with a fine-tuned run, showing evidence.

  realm-answer --workdir=FT_WORKDIR "who founded the kalomi trading company?"

Prints the predicted answer, its joint logit, and the blocks it read with
their titles and retrieval probabilities p(z|x) (REALM's interpretability).
`--corpus` reads another corpus (realm-prepare-corpus with the same
tokenizer), embedded with the run's frozen document tower: in memory when
`--index` is not given, or an index built beforehand by realm-index-builder
(the same document tower) when it is. Knowledge is updated by swapping the
corpus, with no retraining (REALM paper, App. C).
"""
import json
import textwrap

from absl import app
from absl import flags

from realm_jax import cli
from realm_jax import prediction

def format_prediction(question: str, prediction: dict) -> str:
  lines = [f'Q: {question}', f'A: {prediction["answer"]}']
  if 'score' in prediction:
    lines[-1] += f'   (joint logit {prediction["score"]:.2f}, from block ' \
                 f'{prediction["block"] + 1})'
  for rank, block in enumerate(prediction['blocks'], start=1):
    lines.append(f'  [{rank}] p(z|x)={block["probability"]:.3f}  '
                 f'{block["title"]}  (block {block["block_id"]})')
    lines.append(textwrap.indent(textwrap.shorten(block['text'], 300),
                                 '      '))
  return '\n'.join(lines)


def main(argv):
  questions = argv[1:]
  if not questions:
    raise app.UsageError('give one or more questions as arguments')
  cli.quiet_console()
  options = flags.FLAGS
  predictor = prediction.Predictor(options.workdir, index=options.index,
                                   corpus=options.corpus,
                                   reader_beam_size=options.top_k or None,
                                   retrieval=options.retrieval)
  for question, predicted in zip(questions, predictor.predict(questions)):
    if options.json:
      predicted.pop('retrieved')
      print(json.dumps(dict(question=question, **predicted)))
    else:
      print(format_prediction(question, predicted) + '\n')


def run():
  cli.use_tcmalloc()
  # Defined here, not at import, as cli.run_job does.
  flags.DEFINE_string('workdir', None, 'A realm-finetune workdir.')
  flags.DEFINE_string(
      'index', '', 'An index folder (an index/ with LATEST, or one '
      'version); default WORKDIR/index, or with --corpus alone, that corpus '
      'embedded now.')
  flags.DEFINE_string('corpus', '', 'A prepared corpus folder; default the '
                      'run\'s.')
  flags.DEFINE_enum('retrieval', '', ['', 'dense', 'bm25', 'hybrid'],
                    'Candidates (retrieval/lexical.py); default the run\'s.')
  flags.DEFINE_integer('top_k', 0, 'Blocks to read (default: the run\'s '
                       'reader_beam_size).')
  flags.DEFINE_bool('json', False, 'One JSON object per question instead '
                    'of text.')
  flags.mark_flag_as_required('workdir')
  cli.define_console_flags()
  app.run(main)


if __name__ == '__main__':
  run()
