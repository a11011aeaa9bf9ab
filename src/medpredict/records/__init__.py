"""Clinical records: reading tables, cleaning them, checking their quality, encoding the target."""
