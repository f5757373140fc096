"""Model files: what each checkpoint family needs, where the pack looks for it, and `emo-models` to fetch, list
and verify them (catalog.py is the table; fetch.py, status.py and cli.py act on it).

Nothing here downloads on import or on its own: only `emo-models fetch` (fetch.py) does, when asked.
"""
