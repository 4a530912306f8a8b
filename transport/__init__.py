"""ETP over asyncio on CPython, for every party that is not a battery: discovery on the
multicast group (discovery.py, the market maker's) and authenticated TCP links to
batteries (links.py, an aggregator's). protocol/ makes and checks the frames."""
