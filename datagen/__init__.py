"""datagen: image-text collections -> bilingual instruction shards -> a two-stage mPLUG-Owl trainer."""

__version__ = "0.1.0"
