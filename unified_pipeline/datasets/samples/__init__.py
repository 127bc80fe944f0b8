"""Built-in sample data generators: deterministic, offline, written atomically."""
