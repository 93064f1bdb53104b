"""The engine: run lock, shard parts and fingerprints, the shard-task executor.

Operations (sources, fetch, filters, dedup, ocr, synth, llm, translate, sinks)
live in their own packages; they see only Arrow batches and the step
interface (``datagen.steps``). See ``datagen.pipeline`` for how a recipe
becomes shard tasks and barriers.
"""
