"""Record schema, readers/writers, adapters for published datasets, Hub publishing."""
