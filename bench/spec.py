"""Speculative decoding: tokenspout with and without it, and llama-server with each of its n-gram
drafters, on three workloads, 1 and 4 streams, rounds interleaved (``just bench --only spec``).

(a) editing: an 80-line source file in the prompt, "rewrite it with one name changed" (the answer
copies the prompt); (b) a tool call whose arguments quote the request (a named tool: constrained);
(c) free prose. Every request is greedy, read by the ordinary parsing client. Each target answers one
request of each workload before the rounds, so that the prompts are in its prompt cache and the
figures measure decoding, as a conversation's later turns see it. Each round words its requests anew
(another name, recipient, story: see ``RENAMES``), so that drafts remembered from earlier answers
meet a request close to those, as an agent's next ones are, and never a replay of one.

The draft-model row (``just bench --only spec-draft``): a Q8_0 copy of the model as the target and a
Q4_0 copy as its draft model (tests/model_variants.py makes both), against the same target without
speculation, on editing, quoting (an email forwarded word for word) and prose, one stream; and, when
`just llama-server` has built it, llama-server with the same pair (``-md``) against itself without.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Sequence
from typing import Any

from bench.client import parsed_stream
from bench.server import llama_server_binary, serving, serving_llama_server
from tests.helpers import metrics, spec_tokens
from tests.model_variants import requantized

SOURCE = '''\
"""A small inventory: items, stock levels and orders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    price_cents: int
    stock: int = 0


@dataclass
class Order:
    number: int
    lines: list[tuple[str, int]] = field(default_factory=list)

    def add(self, sku: str, quantity: int) -> None:
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.lines.append((sku, quantity))


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.orders: list[Order] = []

    def register(self, item: Item) -> None:
        if item.sku in self.items:
            raise KeyError(f"duplicate sku {item.sku}")
        self.items[item.sku] = item

    def restock(self, sku: str, quantity: int) -> int:
        item = self.items[sku]
        item.stock += quantity
        return item.stock

    def total_price(self, order: Order) -> int:
        total = 0
        for sku, quantity in order.lines:
            total += self.items[sku].price_cents * quantity
        return total

    def can_fulfil(self, order: Order) -> bool:
        for sku, quantity in order.lines:
            if self.items[sku].stock < quantity:
                return False
        return True

    def fulfil(self, order: Order) -> int:
        if not self.can_fulfil(order):
            raise RuntimeError(f"order {order.number} cannot be fulfilled")
        for sku, quantity in order.lines:
            self.items[sku].stock -= quantity
        self.orders.append(order)
        return self.total_price(order)

    def low_stock(self, threshold: int = 5) -> list[Item]:
        return [item for item in self.items.values() if item.stock < threshold]

    def report(self) -> str:
        lines = []
        for item in sorted(self.items.values(), key=lambda i: i.sku):
            lines.append(f"{item.sku:8} {item.name:20} {item.stock:5} {item.price_cents / 100:8.2f}")
        lines.append(f"{len(self.orders)} orders fulfilled")
        return "\\n".join(lines)


def demo() -> None:
    inventory = Inventory()
    inventory.register(Item("A-1", "bolt", 25, 100))
    inventory.register(Item("B-2", "nut", 10, 3))
    order = Order(1)
    order.add("A-1", 4)
    order.add("B-2", 2)
    print(inventory.fulfil(order))
    print(inventory.report())
'''

EMAIL = (
    "Hi Sam, the quarterly review moves to Thursday at 10:00 in room 4B. Please bring the updated "
    "sales figures for the northern region, the draft budget for next year and the notes from the "
    "supplier meeting. Lunch will be provided. If you cannot attend, send your slides to Maria by "
    "Wednesday evening so she can present them for you."
)

SEND_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "maxLength": 60},
                "subject": {"type": "string", "maxLength": 80},
                "body": {"type": "string", "maxLength": 600},
            },
            "required": ["to", "subject", "body"],
        },
    },
}


# Each round asks for something else (another name, another recipient, another story), so that a
# drafter that remembers earlier answers (llama-server's ngram-mod, our shared pool) meets requests
# like an agent's later ones, close to what it has seen, never the same: resending one greedy request
# would measure replaying its answer, not copying the prompt.
RENAMES = ("Warehouse", "Depot", "Storehouse", "Stockroom", "Repository", "Cellar", "Pantry", "Vault")
RECIPIENTS = ("sam", "maria", "lee", "noor", "ivan", "grace", "tomas", "aiko")
SUBJECTS = (
    "a lighthouse keeper who finds a message in a bottle",
    "a baker who wakes up able to hear bread rising",
    "two rival clockmakers snowed in at the same inn",
    "a cartographer who maps a city that moves at night",
    "a retired astronaut who teaches a village to read the stars",
    "a girl who trains a crow to deliver letters",
    "a ferry captain on the last crossing before a storm",
    "a librarian who finds a book that writes itself",
)


def workloads(n_tokens: int, variant: int = 0) -> dict[str, dict[str, Any]]:
    """The request body of each workload (chat completions, greedy), in its ``variant``-th wording."""
    rename, recipient, subject = (names[variant % len(names)] for names in (RENAMES, RECIPIENTS, SUBJECTS))
    edit = (
        f"Here is a Python module:\n\n```python\n{SOURCE}```\n\nRewrite the whole module with the class "
        f"`Inventory` renamed to `{rename}`. Answer with the complete code only."
    )
    tool = (
        f"Send this email to {recipient}@example.com with the subject 'Quarterly review', word for word:"
        f"\n\n{EMAIL}"
    )
    prose = f"Write a long story about {subject}."
    return {
        "editing": {"messages": [{"role": "user", "content": edit}], "max_tokens": 2 * n_tokens},
        "tool call": {
            "messages": [{"role": "user", "content": tool}],
            "tools": [SEND_EMAIL],
            "tool_choice": {"type": "function", "function": {"name": "send_email"}},
            "max_tokens": n_tokens,
        },
        "prose": {"messages": [{"role": "user", "content": prose}], "max_tokens": n_tokens},
    }


async def _rate(url: str, body: dict[str, Any], n_streams: int) -> tuple[float, int]:
    """Aggregate completion tokens/s of ``n_streams`` concurrent streams, first request sent to last
    token received; and the tokens in all."""
    request = {**body, "temperature": 0, "model": "m"}
    results = await asyncio.gather(
        *(parsed_stream(url, "/v1/chat/completions", request) for _ in range(n_streams))
    )
    tokens = sum(r.tokens for r in results)
    return tokens / (max(r.last for r in results) - min(r.sent for r in results)), tokens


LLAMA_SPEC_TYPES = ("none", "ngram-simple", "ngram-map-k", "ngram-mod")
# Our speculative servers, each against our plain loop: the default, and with the shared pool of earlier
# answers (opt-in; the size is llama-server's ngram-mod's).
OURS = {"spec": ["--spec"], "spec+pool": ["--spec", "--spec-pool-tokens", str(1 << 18)]}


def report(model: str, threads: int, rounds: int, n_tokens: int, streams: Sequence[int] = (1, 4)) -> None:
    loads = workloads(n_tokens)  # the first wording, to warm the prompt caches
    rates: dict[tuple[str, str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        common = ["--threads", str(threads), "--parallel", "4"]
        targets: list[tuple[str, str]] = []
        for name, flags in {"plain": ["--no-spec"], **OURS}.items():
            _, url = stack.enter_context(serving(model, [*common, *flags]))
            targets.append((f"tokenspout {name}", url))
        if binary := llama_server_binary():
            for kind in LLAMA_SPEC_TYPES:
                flags = ["-t", str(threads), "-np", "4", "-c", "8192", "--jinja", "--spec-type", kind]
                _, url = stack.enter_context(serving_llama_server(binary, model, flags))
                targets.append((f"llama-server {kind}", url))
        else:
            print("(llama-server is not built: `just llama-server` builds it for this comparison)")
        for _, url in targets:  # every prompt into every prompt cache
            for body in loads.values():
                asyncio.run(_rate(url, body, 1))
        for round_ in range(1, rounds + 1):
            line = [f"round {round_}:"]
            for load in loads:
                for n in streams:
                    body = workloads(n_tokens, _variant(round_, streams.index(n), len(streams)))[load]
                    for name, url in targets[:: 1 if round_ % 2 else -1]:  # drift favours nobody
                        rate, _ = asyncio.run(_rate(url, body, n))
                        rates.setdefault((name, load, n), []).append(rate)
                    last_plain = rates[("tokenspout plain", load, n)][-1]
                    ratios = " ".join(
                        f"{rates[(f'tokenspout {o}', load, n)][-1] / last_plain:.2f}" for o in OURS
                    )
                    line.append(f"{load} {n}x {ratios} (plain {last_plain:.0f} tok/s) |")
            print(" ".join(line), flush=True)
    print(f"\nmedians of per-round ratios (same run, rounds interleaved; ours: {', '.join(OURS)}):")
    for load in loads:
        for n in streams:
            print(_summary(rates, targets, load, n))
    print()


GOALS = {"editing": 2.0, "tool call": 1.5, "prose": 0.98}


def _summary(
    rates: dict[tuple[str, str, int], list[float]], targets: list[tuple[str, str]], load: str, n: int
) -> str:
    """One workload's line: each of our speculative servers and each llama-server against our plain
    loop, and ours against llama-server's best."""
    plain = rates[("tokenspout plain", load, n)]
    ours = {o: rates[(f"tokenspout {o}", load, n)] for o in OURS}
    goal = GOALS[load] if n == 1 else 1.0
    mine = ", ".join(f"{o} {_median_ratio(r, plain):.3f}" for o, r in ours.items())
    summary = f"{load:9} {n} stream(s): tokenspout / plain: {mine} (goal >= {goal})"
    theirs = {name: rates[(name, load, n)] for name, _ in targets if name.startswith("llama")}
    if theirs:
        best = max(theirs, key=lambda name: statistics.median(theirs[name]))
        spread = ", ".join(
            f"{name.removeprefix('llama-server ')} {_median_ratio(r, plain):.2f}"
            for name, r in theirs.items()
        )
        against = ", ".join(f"{o} {_median_ratio(r, theirs[best]):.3f}" for o, r in ours.items())
        summary += f"; llama-server / our plain: {spread}; ours / llama-server best ({best}): {against}"
    return summary


def _variant(round_: int, stream_index: int, n_stream_counts: int) -> int:
    """A wording of its own for each round and stream count (never the warm-up's, 0), until they run out:
    past 7 measurements a workload's wordings come round again."""
    return 1 + ((round_ - 1) * n_stream_counts + stream_index) % (len(RENAMES) - 1)


def _median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def draft_workloads(n_tokens: int) -> dict[str, dict[str, Any]]:
    """Editing and prose as above, and quoting: an email forwarded word for word (unconstrained)."""
    loads = workloads(n_tokens)
    quote = f"Forward this email to Maria, word for word, without a comment:\n\n{EMAIL}"
    return {
        "editing": loads["editing"],
        "quoting": {"messages": [{"role": "user", "content": quote}], "max_tokens": n_tokens},
        "prose": loads["prose"],
    }


def report_draft_model(threads: int, rounds: int, n_tokens: int) -> None:
    """tokenspout on a Q8_0 target with a Q4_0 draft model of the same weights, against the same target
    without speculation: the ratio of tokens/s per workload, 1 stream, whatever it is."""
    target, draft = str(requantized(ftype="Q8_0")), str(requantized(ftype="Q4_0"))
    loads = draft_workloads(n_tokens)
    # 4,096 cells per slot for both, so that the two contexts' budget does not shrink the drafting one's
    common = ["--threads", str(threads), "--parallel", "4", "--ctx-size", "16384"]
    rates: dict[tuple[str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        targets: list[tuple[str, str]] = []
        for name, flags in (("plain", ["--no-spec"]), ("draft", ["--no-spec", "--draft-model", draft])):
            _, url = stack.enter_context(serving(target, [*common, *flags]))
            targets.append((name, url))
        if binary := llama_server_binary():
            base = ["-t", str(threads), "-np", "4", "-c", "16384", "--jinja"]
            for name, flags in (
                ("llama-server plain", []),
                ("llama-server draft", ["-md", draft, "--spec-type", "draft-simple"]),
            ):
                _, url = stack.enter_context(serving_llama_server(binary, target, [*base, *flags]))
                targets.append((name, url))
        for _, url in targets:  # every prompt into every prompt cache
            for body in loads.values():
                asyncio.run(_rate(url, body, 1))
        drafted = {url: _draft_counts(url) for name, url in targets if name == "draft"}
        for round_ in range(1, rounds + 1):
            line = [f"round {round_}:"]
            for load, body in loads.items():
                for name, url in targets[:: 1 if round_ % 2 else -1]:  # drift favours nobody
                    rates.setdefault((name, load), []).append(asyncio.run(_rate(url, body, 1))[0])
                plain, spec = rates[("plain", load)][-1], rates[("draft", load)][-1]
                line.append(f"{load} {spec / plain:.2f} (plain {plain:.0f} tok/s) |")
            print(" ".join(line), flush=True)
        for url, (before_drafted, before_accepted) in drafted.items():
            after_drafted, after_accepted = _draft_counts(url)
            n, ok = after_drafted - before_drafted, after_accepted - before_accepted
            print(f"draft tokens in the rounds: {n:.0f}, accepted {ok:.0f} ({ok / max(n, 1):.0%})")
    print("\nQ8_0 target with a Q4_0 draft model, 1 stream, medians of per-round ratios:")
    for load in loads:
        ratio = _median_ratio(rates[("draft", load)], rates[("plain", load)])
        summary = f"{load:8} tokenspout draft / plain {ratio:.3f}"
        if ("llama-server draft", load) in rates:
            theirs = _median_ratio(rates[("llama-server draft", load)], rates[("llama-server plain", load)])
            ours = _median_ratio(rates[("draft", load)], rates[("llama-server draft", load)])
            summary += f"; llama-server -md / its plain {theirs:.3f}; ours / theirs with a draft {ours:.3f}"
        print(summary)
    print()


def _draft_counts(url: str) -> tuple[float, float]:
    m = metrics(url)
    return spec_tokens(m, "draft"), spec_tokens(m, "accepted")
