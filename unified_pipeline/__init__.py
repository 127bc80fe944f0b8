"""unified-pipeline."""
