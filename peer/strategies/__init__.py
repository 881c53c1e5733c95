"""Training strategies: what a peer sends after its local steps and what it
does with what it receives. Pure arithmetic on tensors: no gRPC, no threads,
so each rule can be tested by calling it."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from peer.strategies.adag import ADAG
from peer.strategies.aeasgd import AsynchronousEASGD
from peer.strategies.average import ModelAveraging
from peer.strategies.base import Incoming, Outgoing, Strategy, StrategyContext
from peer.strategies.dasgd import DASGD
from peer.strategies.downpour import Downpour
from peer.strategies.dynsgd import DynSGD
from peer.strategies.easgd import EASGD
from peer.strategies.gossip import Gossip

REGISTRY: dict[str, Callable[..., Strategy]] = {
    "dasgd": DASGD,
    "average": ModelAveraging,
    "easgd": EASGD,
    "aeasgd": AsynchronousEASGD,
    "downpour": Downpour,
    "adag": ADAG,
    "dynsgd": DynSGD,
    "gossip": Gossip,
}


def make_strategy(name: str, context: StrategyContext, **options) -> Strategy:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}: choose one of {', '.join(sorted(REGISTRY))}"
        ) from None
    return factory(context, **options)


def strategy_parameters(name: str) -> set[str]:
    """Keyword options a strategy takes (so the config passes only those)."""
    factory = REGISTRY.get(name)
    if factory is None:
        return set()
    return set(inspect.signature(factory).parameters) - {"context"}


__all__ = [
    "REGISTRY",
    "Incoming",
    "Outgoing",
    "Strategy",
    "StrategyContext",
    "make_strategy",
    "strategy_parameters",
]
