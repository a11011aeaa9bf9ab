"""The model bundle: one schema, one writer, one verified reader."""
