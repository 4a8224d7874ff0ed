"""The jobs, one module per command (setup.cfg's entry points).

realm-prepare-corpus (prepare_corpus.py), realm-ict (ict.py), realm-pretrain
(pretrain.py), realm-finetune (finetune.py), realm-evaluate (evaluate.py),
realm-answer (answer.py), realm-compile (aot.py), realm-import
(import_released.py); realm-index-builder is index_builder/main.py. A job
imports the library, never another job, and the library never imports a
job.
"""
