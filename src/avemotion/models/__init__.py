"""Model implementations: one folder per model, shared blocks in `conformer.py`."""
