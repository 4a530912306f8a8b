"""The hub's market maker: the per-slot uniform-price double auction and the price signal."""
