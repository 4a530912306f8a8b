"""The strategy an aggregator's settings name (aggregator.toml, or a hub.toml
[[aggregator]] block): one of aggregator/strategies.py's buyers, or a Buyer subclass of
the user's, made from its settings."""

import random

from aggregator.strategies import AdaptiveBidder, Buyer, SingleUtility, TruthfulBidder, ValueBidder


def make_strategy(cfg, seed=None):
    """The strategy an aggregator's settings name (hub.toml's [[aggregator]] blocks and
    aggregator.toml share them): value, adaptive, truthful, utility, or "package.module:Class",
    a Buyer subclass of the user's, made as Class(name, **its settings["options"])."""
    name, limits = cfg["key_id"], {"budget": cfg["budget"], "capacity": cfg["capacity"]}
    seed = cfg.get("seed") if cfg.get("seed") is not None else seed
    rng = random.Random("%s/aggregator/%d" % (seed, name))  # as the experiment's buyers
    value = _drawn(cfg["value"], cfg["spread"]) if cfg["spread"] else cfg["value"]
    kind = cfg["strategy"]
    if kind == "value":
        return ValueBidder(name, value, cfg["margin"], bidders=cfg["bidders"], rng=rng, **limits)
    if kind == "adaptive":
        return AdaptiveBidder(name, value, cfg["margin"], rng=rng, **limits)
    if kind == "truthful":
        return TruthfulBidder(name, value, cfg["margin"], rng=rng, **limits)
    if kind == "utility":
        return SingleUtility(name, price=cfg["price"], **limits)
    return load_plugin(kind)(name, **dict(cfg.get("options") or {}, **limits))


def load_plugin(path):
    """ "package.module:Class" -> the class, a Buyer; ValueError names what is wrong."""
    import importlib

    module_name, _, class_name = str(path).partition(":")
    if not module_name or not class_name:
        raise ValueError('strategy %r: value, adaptive, truthful, utility or "module:Class"'
                         % (path,))  # fmt: skip
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ValueError("strategy %s: cannot import %s (%s)" % (path, module_name, exc)) from None
    except AttributeError:
        raise ValueError("strategy %s: %s has no %s" % (path, module_name, class_name)) from None
    if not (isinstance(found, type) and issubclass(found, Buyer)):
        raise ValueError("strategy %s is not a Buyer subclass (aggregator/strategies.py)" % path)
    return found


def _drawn(low, spread):
    """A resale value drawn per offer from [low, low + spread] (strategies' value form)."""

    def value(_offer, rng):
        return low + rng.uniform(0.0, spread)

    return value
