"""Generators for the built-in tasks: support intent classification, slot extraction to JSON, arithmetic.

``generate_task(name, n, seed)`` returns ``{"train": [...], "validation": [...], "test": [...]}`` of
plain chat-record dicts. Template ids decide the split: the last template of each group is
held out for the test split.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from slmops.errors import ConfigError

INTENT_SYSTEM = "Classify the customer's message into one intent: {labels}. Answer with the intent only."
INTENTS: dict[str, list[str]] = {
    "refund": [
        "I want my money back for the {product}.",
        "Can I get a refund on order {order}?",
        "The {product} broke, please refund me.",
        "How do I return the {product} and get refunded?",
        "please refund order {order}, it never worked",
        "I'd like a refund for my {product}, it is not what I ordered.",
    ],
    "order_status": [
        "Where is my order {order}?",
        "Has order {order} shipped yet?",
        "When will my {product} arrive?",
        "Can you track order {order} for me?",
        "my {product} still hasn't shown up, what's the status",
        "Any update on the delivery of order {order}?",
    ],
    "cancel_order": [
        "Please cancel order {order}.",
        "I changed my mind, cancel the {product}.",
        "Stop order {order}, I don't want it anymore.",
        "How can I cancel my {product} order?",
        "cancel {order} asap please",
        "I no longer need the {product}, please cancel it.",
    ],
    "change_address": [
        "I moved to {city}, update my shipping address.",
        "Ship order {order} to my new address in {city} please.",
        "Can I change the delivery address to {city}?",
        "wrong address on {order}, it should go to {city}",
        "Please send my {product} to {city} instead.",
        "Update the address for order {order}, I now live in {city}.",
    ],
    "reset_password": [
        "I forgot my password.",
        "How do I reset my password?",
        "I can't log in to my account.",
        "my login isn't working, need a new password",
        "Please help me recover access to my account.",
        "The password reset email never arrived.",
    ],
    "billing": [
        "I was charged twice for order {order}.",
        "Why is there an extra fee on my bill?",
        "Can I get an invoice for the {product}?",
        "my card was billed but order {order} failed",
        "What payment methods do you accept?",
        "The price of the {product} on my bill is wrong.",
    ],
}
PRODUCTS = ["laptop", "headphones", "coffee maker", "desk lamp", "phone case", "backpack", "keyboard", "monitor", "blender", "jacket"]
CITIES = ["Lisbon", "Oslo", "Denver", "Osaka", "Nairobi", "Lyon", "Austin", "Krakow", "Perth", "Porto"]

EXTRACT_SYSTEM = 'Extract the order as JSON with keys "product", "quantity" and "city".'
EXTRACT_TEMPLATES = [
    "Send {qty} {product} to {city}.",
    "I need {qty} of the {product} delivered in {city}.",
    "Please ship {qty} {product} units to our office in {city}.",
    "order: {qty} x {product}, destination {city}",
    "Could you deliver {qty} {product} to {city} next week?",
    "We want {qty} {product} for the {city} store.",
]

MATH_SYSTEM = "Answer with the number only."
MATH_TEMPLATES = [
    ("What is {a} plus {b}?", lambda a, b: a + b),
    ("Add {a} and {b}.", lambda a, b: a + b),
    ("What is {a} minus {b}?", lambda a, b: a - b),
    ("Subtract {b} from {a}.", lambda a, b: a - b),
    ("What is {a} times {b}?", lambda a, b: a * b),
    ("Compute {a} + {b}.", lambda a, b: a + b),
]


def _chat(system: str, user: str, answer: str, label: str, template: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "label": label,
        "meta": {"template": template},
    }


def _intent(rng: random.Random, held_out: bool) -> dict[str, Any]:
    intent = rng.choice(sorted(INTENTS))
    templates = INTENTS[intent]
    t = len(templates) - 1 if held_out else rng.randrange(len(templates) - 1)
    text = templates[t].format(product=rng.choice(PRODUCTS), order=f"#{rng.randint(10000, 99999)}", city=rng.choice(CITIES))
    return _chat(INTENT_SYSTEM.format(labels=", ".join(sorted(INTENTS))), text, intent, intent, t)


def _extract(rng: random.Random, held_out: bool) -> dict[str, Any]:
    t = len(EXTRACT_TEMPLATES) - 1 if held_out else rng.randrange(len(EXTRACT_TEMPLATES) - 1)
    slots = {"product": rng.choice(PRODUCTS), "quantity": rng.randint(1, 20), "city": rng.choice(CITIES)}
    text = EXTRACT_TEMPLATES[t].format(qty=slots["quantity"], product=slots["product"], city=slots["city"])
    return _chat(EXTRACT_SYSTEM, text, json.dumps(slots), "extract", t)


def _math(rng: random.Random, held_out: bool) -> dict[str, Any]:
    t = len(MATH_TEMPLATES) - 1 if held_out else rng.randrange(len(MATH_TEMPLATES) - 1)
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    template, fn = MATH_TEMPLATES[t]
    return _chat(MATH_SYSTEM, template.format(a=a, b=b), str(fn(a, b)), "math", t)


TASKS: dict[str, Callable[[random.Random, bool], dict[str, Any]]] = {
    "support-intent": _intent,
    "extract-json": _extract,
    "arithmetic": _math,
}


def generate_task(name: str, n: int = 600, *, seed: int = 0, validation: float = 0.1, test: float = 0.15) -> dict[str, list[dict[str, Any]]]:
    """``n`` records of task ``name`` split into train/validation/test (test uses held-out templates)."""
    if name not in TASKS:
        raise ConfigError(f"unknown built-in task {name!r}", fix=f"use one of: {', '.join(TASKS)}")
    if n < 10:
        raise ConfigError(f"--n {n} is too small", fix="ask for at least 10 records")
    rng = random.Random(f"{name}:{seed}")
    make = TASKS[name]
    n_test = max(1, round(n * test))
    n_val = max(1, round(n * validation))
    n_train = n - n_test - n_val
    return {
        "train": [make(rng, False) for _ in range(n_train)],
        "validation": [make(rng, False) for _ in range(n_val)],
        "test": [make(rng, True) for _ in range(n_test)],
    }
