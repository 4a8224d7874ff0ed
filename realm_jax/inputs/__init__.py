"""Host-side inputs: what each job feeds its jitted step.

- blocks.py: how a block is featurized for the retriever ([CLS] title [SEP]
  body [SEP]) and, with a query, for the reader ([CLS] query [SEP] body
  [SEP]), the null document included: the one reader-input builder of
  pre-training, fine-tuning, evaluation and realm-answer.
- ict.py: Inverse Cloze Task batches.
- pretrain.py: salient-span (or random) masked queries, written once to
  WORKDIR/examples, and the REALM candidates of a batch.
- openqa.py: questions, gold spans and the closed-book layout.
- questions.py: loading question sets (JSON lines, tfds).
- salient_spans.py: the salient span annotators (dates, named entities).
"""
