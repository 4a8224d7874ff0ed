"""Retrieval and the asynchronous index refresh protocol.

The trainer and the index builder are separate programs that share only the
workspace directory (WORKSPACE.md). The protocol, step by step:

1. The trainer records its config in WORKDIR/config.json, removes
   TRAINING_DONE, and saves orbax checkpoints under WORKDIR/checkpoints,
   keeping at least MIN_CHECKPOINTS_TO_KEEP steps (workspace.py).
2. The builder (builder.py) polls the checkpoints. When the newest complete
   step is newer than the step LATEST names, it restores only the document
   tower of that step (workspace.DOC_TOWER_PATH, an orbax partial restore)
   with the architecture from config.json.
3. It embeds the corpus in chunks (embedding.py); each chunk is written to a
   temporary file, renamed, then marked `.done` under index/building/step-N
   (index_store.py). A restarted builder embeds only unmarked chunks; on
   several hosts host h embeds chunks c with c mod hosts == h and process 0
   waits for every marker.
4. Process 0 builds the MIPS index (mips.py: exact, or ScaNN), saves it
   with a manifest of every file's checksum, reloads it and runs a search
   check. The version counts once its manifest.json is in place: on a local
   disk the folder, made under building/step-N/index, is renamed to
   index/step-N; on a bucket it is made in a local staging folder and
   uploaded to index/step-N with manifest.json last. A folder without a
   valid manifest (a killed upload) is saved again by the next run.
5. Only then is LATEST replaced (a temporary file renamed over it): before
   the rename readers see the previous version, after it the new one.
6. Versions beyond keep_versions are deleted, oldest first - never the one
   LATEST names nor one a fresh lease names.
7. In the trainer, an IndexHandle (index_handle.py) polls LATEST in a
   background thread, verifies a new version's checksums and shapes, loads
   it off the training thread and swaps it in when the trainer calls
   maybe_swap() between steps; it renews a lease naming the versions it
   holds. An uncommitted, partial or corrupt version is never loaded.
8. The trainer writes TRAINING_DONE when it finishes; the builder exits once
   the last checkpoint is indexed.
"""
