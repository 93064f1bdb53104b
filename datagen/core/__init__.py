"""The engine, apart from the operations.

- ``pipeline``: a recipe as shard tasks and barriers, resumed by shard.
- ``executor``: shard tasks (fused per-row steps over one input shard) and the local process pool.
- ``parts``: what a task leaves on disk, atomically; fingerprints; temporary names.
- ``lock``: one run per output folder.
- ``steps``: the step interface and run context; ``records``: the row contracts (Arrow schemas);
  ``cache``: the request cache for costly external calls.

Operations (sources, fetch, filters, dedup, ocr, synth, llm, translate, sinks)
live in their own packages, each with its config beside it; they see only Arrow
batches and the step interface.
"""
