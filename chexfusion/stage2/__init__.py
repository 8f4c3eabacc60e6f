"""Stage 2: a Transformer over the cached feature maps of all views of a study."""
