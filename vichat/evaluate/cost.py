"""Tokens and dollars: estimates before a run, real counts during it, and a hard spending cap.

Prices are US dollars per million tokens (input, output) from OpenAI's public price list; they
change, so ``--price-in`` / ``--price-out`` override them and an unknown model has no price (its
cost is reported as unknown, and ``--max-cost`` then asks for prices instead of guessing).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Sequence

from ..jobs import Halt
from ..records import VichatError

#: (input, output) USD per million tokens; the longest matching prefix of the model name wins.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4": (30.0, 60.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-1106": (10.0, 30.0),
    "gpt-4-0125": (10.0, 30.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}
#: What a review usually takes: the paper's judge wrote about 200-350 tokens per review.
TYPICAL_COMPLETION_TOKENS = 300
MESSAGE_OVERHEAD_TOKENS = 4


def price_for(model: str) -> tuple[float, float] | None:
    """``(input, output)`` dollars per million tokens for ``model``, or ``None`` if unknown."""
    best = ""
    for prefix in PRICES:
        if model.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return PRICES[best] if best else None


def estimate_tokens(text: str) -> int:
    """A deliberately generous token count for ``text``.

    BPE vocabularies tuned on English spend about one token per 4 ASCII characters, but split
    Vietnamese syllables with diacritics much more finely; a third of the UTF-8 bytes covers both
    without a tokenizer dependency. The cap and the limiter only need an upper-ish bound; real
    counts come from the API's ``usage``.
    """
    return math.ceil(len(text.encode("utf-8")) / 3)


def estimate_messages(messages: Sequence[dict]) -> int:
    """Estimated prompt tokens of chat ``messages``."""
    return sum(estimate_tokens(str(m.get("content", ""))) + MESSAGE_OVERHEAD_TOKENS for m in messages)


class BudgetExceeded(VichatError, Halt):
    """The next request could push spending past ``--max-cost``; nothing more is sent (a
    :class:`vichat.jobs.Halt`: judgments in flight still land)."""


@dataclass
class Usage:
    """Counted tokens and dollars of one run."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Budget:
    """Counts tokens and dollars; with ``max_cost``, refuses any request whose worst case (its
    estimated prompt plus ``max_tokens`` of answer) could cross the cap, counting what the
    requests still in flight have reserved. Thread-safe."""

    def __init__(self, price: tuple[float, float] | None, max_cost: float | None = None) -> None:
        if max_cost is not None and price is None:
            raise VichatError(
                "--max-cost needs the judge model's price: pass --price-in and --price-out (USD per million tokens)"
            )
        self.price = price
        self.max_cost = max_cost
        self.usage = Usage()
        self._reserved = 0.0
        self._lock = threading.Lock()

    def cost_of(self, prompt_tokens: float, completion_tokens: float) -> float:
        if self.price is None:
            return 0.0
        return (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1_000_000

    def reserve(self, prompt_tokens: int, max_completion: int) -> float:
        """Reserve the worst case of one request; raises :class:`BudgetExceeded` past the cap."""
        worst = self.cost_of(prompt_tokens, max_completion)
        with self._lock:
            if self.max_cost is not None and self.usage.cost + self._reserved + worst > self.max_cost + 1e-12:
                raise BudgetExceeded(
                    f"stopping before the cost cap: ${self.usage.cost:.4f} spent, ${self._reserved:.4f} in flight, "
                    f"next request up to ${worst:.4f}, --max-cost ${self.max_cost:.2f}. Finished judgments are "
                    "cached: rerun with a higher --max-cost to continue"
                )
            self._reserved += worst
        return worst

    def settle(self, reserved: float, prompt_tokens: int | None, completion_tokens: int | None,
               estimate: int, requests: int = 1) -> None:
        """Replace a reservation by what the request(s) really used (the estimate when the server
        sent no usage, so a count is never silently zero)."""
        p = prompt_tokens if prompt_tokens is not None else estimate
        c = completion_tokens or 0
        with self._lock:
            self._reserved = max(0.0, self._reserved - reserved)
            self.usage.requests += requests
            self.usage.prompt_tokens += p
            self.usage.completion_tokens += c
            self.usage.cost += self.cost_of(p, c)

    def release(self, reserved: float) -> None:
        """Drop a reservation for a request that was never answered."""
        with self._lock:
            self._reserved = max(0.0, self._reserved - reserved)
