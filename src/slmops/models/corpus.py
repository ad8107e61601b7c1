"""A small deterministic English corpus generated in code, for training tokenizers with no data.

It mixes plain sentences, question/answer pairs, numbers, lists, JSON and a little code, so a
byte-level BPE trained on it sees the kinds of strings the demo tasks use. The same ``seed`` and
``n`` always give the same texts (a pure function of its arguments; no files, no network).
"""

from __future__ import annotations

import json
import random

_NAMES = (
    "Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj",
    "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yasmin", "Zoe", "Omar", "Priya", "Chen",
)
_PLACES = (
    "Paris", "London", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Oslo", "Vienna", "Prague", "Tokyo", "Seoul",
    "Delhi", "Cairo", "Nairobi", "Lima", "Toronto", "Chicago", "Boston", "Sydney", "the office", "the warehouse",
    "the library", "the station", "the market", "the harbor", "the valley", "the mountains", "the village",
)
_NOUNS = (
    "account", "address", "answer", "apple", "battery", "bill", "bird", "book", "bottle", "box", "bridge", "budget",
    "camera", "car", "card", "cat", "chair", "city", "cloud", "coffee", "computer", "contract", "customer", "day",
    "delivery", "device", "dog", "door", "email", "engine", "error", "event", "file", "flight", "flower", "friend",
    "garden", "gift", "group", "house", "idea", "invoice", "key", "kitchen", "laptop", "letter", "light", "machine",
    "manager", "map", "meeting", "message", "model", "money", "morning", "night", "note", "number", "order", "package",
    "page", "password", "payment", "phone", "picture", "plan", "printer", "problem", "product", "question", "receipt",
    "record", "refund", "report", "request", "river", "road", "room", "school", "screen", "server", "service", "ship",
    "shop", "song", "station", "store", "story", "student", "subscription", "system", "table", "teacher", "team",
    "ticket", "train", "tree", "update", "user", "value", "water", "weather", "week", "window", "word", "year",
)
_ADJECTIVES = (
    "quick", "slow", "bright", "dark", "small", "large", "new", "old", "red", "blue", "green", "yellow", "happy",
    "quiet", "loud", "simple", "complex", "broken", "urgent", "late", "early", "cheap", "expensive", "friendly",
    "careful", "strange", "useful", "empty", "full", "warm", "cold", "short", "long", "clean", "important", "final",
)
_VERBS = (
    ("open", "opened"), ("close", "closed"), ("send", "sent"), ("find", "found"), ("check", "checked"),
    ("order", "ordered"), ("repair", "repaired"), ("read", "read"), ("write", "wrote"), ("call", "called"),
    ("pay", "paid"), ("cancel", "cancelled"), ("update", "updated"), ("reset", "reset"), ("visit", "visited"),
    ("buy", "bought"), ("sell", "sold"), ("carry", "carried"), ("watch", "watched"), ("build", "built"),
    ("move", "moved"), ("plan", "planned"), ("share", "shared"), ("return", "returned"), ("deliver", "delivered"),
    ("install", "installed"), ("explain", "explained"), ("measure", "measured"), ("count", "counted"),
)
_ADVERBS = ("quickly", "slowly", "carefully", "today", "yesterday", "again", "finally", "soon", "twice", "never", "always")
_TOPICS = (
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The capital of France is Paris, and the capital of Japan is Tokyo.",
    "Water boils at 100 degrees Celsius at sea level.",
    "A week has seven days and a year has twelve months.",
    "Small language models can run on a laptop without a network connection.",
    "Quantization stores weights with fewer bits, which makes a model smaller and often faster.",
    "A tokenizer splits text into tokens, and the model predicts the next token.",
    "The sum of two and three is five; the product of four and six is twenty-four.",
    "To reset your password, open the settings page and choose 'Forgot password'.",
    "Refunds are processed within five business days after the return is received.",
)
_QUESTIONS = (
    ("What is the capital of {place}?", "The capital is {place}."),
    ("How many {noun}s did {name} {verb}?", "{name} {verbed} {n} {noun}s."),
    ("Where is the {adj} {noun}?", "The {adj} {noun} is in {place}."),
    ("Can you help me {verb} my {noun}?", "Sure. First, {verb} the {noun} {adv}, then check the {noun2}."),
    ("Why was my {noun} {verbed}?", "Your {noun} was {verbed} because the {noun2} was {adj}."),
    ("What is {a} plus {b}?", "{a} plus {b} is {s}."),
    ("Summarize: {sentence}", "{short}"),
    ("Classify the sentiment: 'The {noun} was {adj}.'", "{sentiment}"),
    ("Extract the name and city from: '{name} lives in {place}.'", '{{"name": "{name}", "city": "{place}"}}'),
)


def builtin_corpus(n: int = 4000, *, seed: int = 0) -> list[str]:
    """``n`` short English texts, the same for the same ``(n, seed)``."""
    rng = random.Random(seed)
    texts: list[str] = list(_TOPICS)
    makers = (_sentence, _qa, _numbers, _listing, _json_text, _code_text, _dialogue)
    weights = (6, 5, 2, 1, 1, 1, 2)
    while len(texts) < n:
        maker = rng.choices(makers, weights)[0]
        texts.append(maker(rng))
    return texts[:n]


def _words(rng: random.Random) -> dict[str, str]:
    verb, verbed = rng.choice(_VERBS)
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return {
        "name": rng.choice(_NAMES), "name2": rng.choice(_NAMES), "place": rng.choice(_PLACES),
        "noun": rng.choice(_NOUNS), "noun2": rng.choice(_NOUNS), "adj": rng.choice(_ADJECTIVES),
        "adj2": rng.choice(_ADJECTIVES), "verb": verb, "verbed": verbed, "adv": rng.choice(_ADVERBS),
        "n": str(rng.randint(2, 60)), "a": str(a), "b": str(b), "s": str(a + b),
    }


def _sentence(rng: random.Random) -> str:
    w = _words(rng)
    forms = (
        "{name} {verbed} the {adj} {noun} {adv}.",
        "The {adj} {noun} near {place} was {verbed} by {name}.",
        "In {place}, {name} and {name2} {verbed} {n} {noun}s before the {adj2} {noun2} arrived.",
        "Please {verb} the {noun} and send the {noun2} to {place} {adv}.",
        "Every {noun} in {place} is {adj}, but the {noun2} is {adj2}.",
        "If the {noun} is {adj}, {verb} it {adv}; otherwise ask {name}.",
        "{name} said: \"I {verbed} the {noun} in {place}, and it was {adj}.\"",
    )
    return rng.choice(forms).format(**w)


def _qa(rng: random.Random) -> str:
    w = _words(rng)
    q, a = rng.choice(_QUESTIONS)
    w["sentence"] = _sentence(rng)
    w["short"] = w["sentence"].split(",")[0].rstrip(".") + "."
    w["sentiment"] = "positive" if w["adj"] in ("happy", "friendly", "useful", "bright", "clean", "warm") else "negative"
    return f"Question: {q.format(**w)}\nAnswer: {a.format(**w)}"


def _numbers(rng: random.Random) -> str:
    w = _words(rng)
    price = f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}"
    date = f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"Order #{rng.randint(10000, 99999)} for {w['n']} {w['noun']}s costs ${price} and ships on {date} to {w['place']}."


def _listing(rng: random.Random) -> str:
    items = rng.sample(_NOUNS, 4)
    return "Steps:\n" + "\n".join(f"{i}. {rng.choice(_VERBS)[0].capitalize()} the {it}." for i, it in enumerate(items, 1))


def _json_text(rng: random.Random) -> str:
    w = _words(rng)
    obj = {"name": w["name"], "city": w["place"], "item": w["noun"], "count": int(w["n"]), "urgent": rng.random() < 0.5}
    return json.dumps(obj)


def _code_text(rng: random.Random) -> str:
    w = _words(rng)
    return f"def {w['verb']}_{w['noun']}(x):\n    return x * {w['n']} + {w['a']}\n"


def _dialogue(rng: random.Random) -> str:
    w = _words(rng)
    return (
        f"User: My {w['noun']} is {w['adj']} and I cannot {w['verb']} it.\n"
        f"Assistant: I am sorry to hear that. Try to {w['verb']} the {w['noun2']} {w['adv']}, or contact {w['name']} in {w['place']}."
    )
