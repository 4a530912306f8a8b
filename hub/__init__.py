"""gridbid hub: the CPython service for a Raspberry Pi (aggregators, market, store)."""
