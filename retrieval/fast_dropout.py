"""Dropout with a cheaper random mask, for the CPU training loops of the two-tower and the ranker.

torch's CPU dropout draws its mask with ``bernoulli_``, one generator call per element: on the
5,000-item quick-start shop that was 12% of a two-tower training step and 31% of a ranker epoch
(torch 2.13, one thread; ``benchmarks/README.md``, "Build effort on the quick-start shop").
:class:`FastDropout` draws 15 random bits per element in one vectorised call instead and keeps an
element when they reach ``round(p * 2**15)``, so an element is dropped with probability
``round(p * 2**15) / 2**15`` (within 2**-16 of ``p``), and scales the kept ones by ``1 / (1 - p)``
as ``nn.Dropout`` does. Same expectation, another random stream: seeded fits stay reproducible
(the mask comes from torch's seeded default generator) but give other weights than
``nn.Dropout`` did. It is a subclass of ``nn.Dropout`` (same ``p``, no parameters, same
state_dict), so saved models load either way and code that checks for dropout layers still
finds them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastDropout", "fast_dropout"]

_BITS = 1 << 15  # int16 random_() draws from [0, 2**15)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``x`` with each element zeroed with probability ~``p`` and the rest scaled by 1 / (1 - p)
    when ``training``; ``x`` itself otherwise (or when ``p`` is 0)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = torch.empty(x.shape, dtype=torch.int16).random_() >= round(p * _BITS)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the mask of :func:`fast_dropout` (``inplace`` is not supported)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
