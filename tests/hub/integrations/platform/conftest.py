"""What the platform's signing tests share."""

import pytest
from helpers.platform import BASE, World


@pytest.fixture
def minted(tmp_path):
    """A World where owner-101 holds certificates 1..3 (three metered solar contracts)
    and carol 1,000,000 credit base units, bought at rate 100."""
    world = World(tmp_path)
    p = world.platform
    for i in range(3):
        world.contract(101, BASE + 60 * i, 1.0, 1.0)
    world.run(p.rec.mint("m1"))
    world.run(p.credit.set_rate("r", 100))
    world.run(p.credit.purchase("c", "carol", 100))
    yield world
    world.close()
