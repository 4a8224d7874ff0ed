"""The training objectives, one module each.

- realm.py: REALM's marginal masked-LM likelihood over retrieved documents,
  trained through the retriever (pre-training).
- ict.py: the Inverse Cloze Task warm start of the retriever.
- openqa.py: ORQA's Open-QA losses (retriever + span reader) and the
  closed-book baseline; the reader's span decoding.

Every loss has the signature `loss(params, batch, dropout_key, graphdef)
-> (loss, metrics)` that trainer.train_step differentiates; dropout_key
None means no dropout (evaluation).
"""
