"""The capability regression suite: broad checks with answers a program can verify, made by code here.

A fine-tune for support tickets can get worse at what it was not trained on: adding two numbers in the
middle of a ticket, converting units, reading code, keeping to a format. Each category below makes
``per_category`` seeded items (nothing downloaded); projects add their own checks (``RegressionCheck``).
The same suite is run for the base model and the adapter with the same decoding, and scored here.

Check kinds and how an answer is scored:

- ``exact``: the answer, trimmed, case-folded and without a final full stop, equals the expected text;
- ``regex``: the pattern is found in the answer (``re.search``, case-insensitive; anchor it to demand more);
- ``numeric``: the *last* number in the answer (``$1,234.50`` reads as 1234.5) is within the tolerance;
- ``json_keys``: the answer is a JSON object (a code fence around it is fine) with exactly the given keys;
- ``max_words``: the answer has between 1 and the given number of words (and names its topic, ``mentions``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from datetime import date, timedelta

KINDS = ("exact", "regex", "numeric", "json_keys", "max_words")
CATEGORIES = (
    "support_arithmetic",
    "units_and_dates",
    "code_output",
    "json_format",
    "word_limit",
    "instruction_following",
)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
ITEMS = ["headphones", "phone case", "charger", "desk lamp", "backpack", "water bottle", "keyboard", "mouse pad"]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro"]


# --- scoring ------------------------------------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(text.strip().casefold().split()).rstrip(".")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text.replace("$", " ").replace("€", " ").replace("£", " "))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _json_object(text: str):
    body = FENCE.sub("", text.strip())
    try:
        return json.loads(body)
    except ValueError:
        start, end = body.find("{"), body.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(body[start : end + 1])
            except ValueError:
                return None
    return None


def score(check: dict, answer: str) -> bool:
    """Whether ``answer`` passes ``check`` ({kind, expected, tolerance})."""
    kind, expected = check["kind"], check["expected"]
    if kind == "exact":
        return _normal(answer) == _normal(str(expected))
    if kind == "regex":
        return re.search(str(expected), answer, flags=re.IGNORECASE) is not None
    if kind == "numeric":
        value = last_number(answer)
        return value is not None and abs(value - float(expected)) <= float(check.get("tolerance") or 0) + 1e-9
    if kind == "json_keys":
        parsed = _json_object(answer)
        return isinstance(parsed, dict) and set(parsed) == set(expected)
    if kind == "max_words":
        words = len(answer.split())
        on_topic = re.search(check["mentions"], answer, flags=re.IGNORECASE) if check.get("mentions") else True
        return 1 <= words <= int(expected) and bool(on_topic)
    raise ValueError(f"Unknown check kind {kind!r}: use one of {', '.join(KINDS)}.")


def validate_check(*, kind: str, expected: str, tolerance: float = 0.0) -> None:
    """A project's check, or a ValueError that names what is wrong with it."""
    if kind not in ("exact", "regex", "numeric"):
        raise ValueError(f"A project check is exact, regex or numeric, not {kind!r}.")
    if not str(expected).strip():
        raise ValueError("Give the expected answer, pattern or number.")
    if kind == "regex":
        try:
            re.compile(expected)
        except re.error as exc:
            raise ValueError(f"The pattern does not compile: {exc}.") from exc
    if kind == "numeric":
        try:
            float(expected)
        except ValueError:
            raise ValueError(f"{expected!r} is not a number (write 30.55, not $30.55).") from None
    if tolerance < 0:
        raise ValueError("The tolerance must be 0 or more.")


# --- the built-in suite ---------------------------------------------------------------------------


def _money(rng: random.Random, low: int = 3, high: int = 120) -> float:
    return rng.randrange(low * 100, high * 100) / 100


def _arithmetic(rng: random.Random) -> dict:
    shape = rng.randrange(4)
    name = rng.choice(NAMES)
    if shape == 0:
        a, b = _money(rng), _money(rng)
        item_a, item_b = rng.sample(ITEMS, 2)
        prompt = (
            f"Ticket from {name}: 'I returned the {item_a} (${a:.2f}) and the {item_b} (${b:.2f}). Please refund "
            "both.' How much do we refund in total? Reply with the amount in dollars."
        )
        answer = a + b
    elif shape == 1:
        price, qty = _money(rng, 2, 40), rng.randrange(2, 9)
        prompt = (
            f"{name} ordered {qty} units of a {rng.choice(ITEMS)} at ${price:.2f} each and asks for the order total "
            "before shipping. What is the total in dollars?"
        )
        answer = price * qty
    elif shape == 2:
        price, pct = _money(rng, 20, 200), rng.choice([10, 15, 20, 25, 30, 40, 50])
        prompt = (
            f"A customer was charged ${price:.2f} and we agreed to refund {pct}% of it as a goodwill gesture. "
            "How many dollars do we refund?"
        )
        answer = price * pct / 100
    else:
        paid, owed = _money(rng, 50, 150), _money(rng, 5, 49)
        prompt = (
            f"Support note: {name} paid ${paid:.2f}, but the correct price after the coupon is ${paid - owed:.2f}. "
            "How much was overcharged, in dollars?"
        )
        answer = owed
    return {"prompt": prompt, "kind": "numeric", "expected": f"{round(answer, 2):.2f}", "tolerance": 0.01}


def _units_and_dates(rng: random.Random) -> dict:
    shape = rng.randrange(4)
    if shape == 0:
        kg = rng.randrange(1, 40) / 2
        return {
            "prompt": f"A parcel weighs {kg:g} kg. How many grams is that? Reply with the number.",
            "kind": "numeric",
            "expected": f"{kg * 1000:g}",
            "tolerance": 0,
        }
    if shape == 1:
        hours = rng.randrange(1, 20) / 4
        return {
            "prompt": f"A repair takes {hours:g} hours. How many minutes is that? Reply with the number.",
            "kind": "numeric",
            "expected": f"{hours * 60:g}",
            "tolerance": 0,
        }
    if shape == 2:
        start = date(2026, 1, 1) + timedelta(days=rng.randrange(0, 360))
        days = rng.randrange(2, 40)
        end = start + timedelta(days=days)
        return {
            "prompt": f"An order was placed on {start.isoformat()} and arrives {days} days later. On what date does "
            "it arrive? Reply with the date as YYYY-MM-DD.",
            "kind": "regex",
            "expected": re.escape(end.isoformat()),
            "tolerance": 0,
        }
    km = rng.randrange(2, 300)
    return {
        "prompt": f"The warehouse is {km} km away. How many metres is that? Reply with the number.",
        "kind": "numeric",
        "expected": str(km * 1000),
        "tolerance": 0,
    }


def _code_output(rng: random.Random) -> dict:
    shape = rng.randrange(4)
    if shape == 0:
        word, k = rng.choice(["support", "refund", "parcel", "invoice", "account"]), rng.randrange(2, 6)
        code, out = f"print(len('{word}') * {k})", str(len(word) * k)
    elif shape == 1:
        values = rng.sample(range(1, 50), 5)
        code, out = f"print(sorted({values})[-2])", str(sorted(values)[-2])
    elif shape == 2:
        word = rng.choice(["abc", "order", "ship", "goldset", "queue"])
        code, out = f"print('{word}'.upper()[::-1])", word.upper()[::-1]
    else:
        a, b = rng.randrange(2, 30), rng.randrange(2, 9)
        code, out = f"x = {a}\nfor _ in range({b}):\n    x += 2\nprint(x)", str(a + 2 * b)
    return {
        "prompt": f"What does this Python code print? Reply with the output only.\n\n{code}",
        "kind": "exact",
        "expected": out,
        "tolerance": 0,
    }


def _json_format(rng: random.Random) -> dict:
    keys = rng.choice(
        [["order_id", "status"], ["customer", "refund_amount", "currency"], ["ticket", "priority"], ["sku", "quantity"]]
    )
    return {
        "prompt": f"Reply with only a JSON object with exactly the keys {', '.join(keys)} describing order "
        f"{rng.randrange(1000, 99999)} for {rng.choice(NAMES)}. No other text.",
        "kind": "json_keys",
        "expected": keys,
        "tolerance": 0,
    }


def _word_limit(rng: random.Random) -> dict:
    limit = rng.choice([8, 10, 12, 15, 20])
    topic, mentions = rng.choice(
        [
            ("their parcel is delayed", r"parcel|package|delivery|shipment"),
            ("the refund was approved", r"refund"),
            ("the password reset link expired", r"link|password|reset"),
            ("the item is back in stock", r"stock|available"),
            ("the invoice was sent again", r"invoice"),
        ]
    )
    return {
        "prompt": f"In at most {limit} words, tell a customer that {topic}.",
        "kind": "max_words",
        "expected": str(limit),
        "mentions": mentions,
        "tolerance": 0,
    }


def _instruction(rng: random.Random) -> dict:
    shape = rng.randrange(3)
    if shape == 0:
        word = rng.choice(["CONFIRMED", "APPROVED", "RECEIVED", "ESCALATED"])
        return {
            "prompt": f"Reply with the word {word} in capital letters and nothing else.",
            "kind": "exact",
            "expected": word,
            "tolerance": 0,
        }
    if shape == 1:
        number = rng.randrange(10000, 99999)
        return {
            "prompt": f"Repeat this order number back, digits only: {number}",
            "kind": "exact",
            "expected": str(number),
            "tolerance": 0,
        }
    a, b = rng.randrange(1, 100), rng.randrange(1, 100)
    truth = "yes" if a > b else "no"
    return {
        "prompt": f"Answer yes or no only: is {a} greater than {b}?",
        "kind": "regex",
        "expected": rf"^\W*{truth}\W*$",
        "tolerance": 0,
    }


MAKERS = {
    "support_arithmetic": _arithmetic,
    "units_and_dates": _units_and_dates,
    "code_output": _code_output,
    "json_format": _json_format,
    "word_limit": _word_limit,
    "instruction_following": _instruction,
}


def build_suite(*, seed: int = 0, per_category: int = 50) -> list[dict]:
    """The built-in checks: ``per_category`` per category, the same for the same seed."""
    checks = []
    for category in CATEGORIES:
        rng = random.Random(f"{seed}:{category}")
        for i in range(per_category):
            checks.append({"key": f"{category}-{i:04d}", "category": category, **MAKERS[category](rng)})
    return checks


def project_checks(project_ids) -> list[dict]:
    if not project_ids:
        return []
    from evalsets.judging.models import RegressionCheck

    return [
        {
            "key": f"project-{c.pk}",
            "category": c.category,
            "prompt": c.prompt,
            "kind": c.kind,
            "expected": c.expected,
            "tolerance": c.tolerance,
        }
        for c in RegressionCheck.objects.filter(project_id__in=list(project_ids)).order_by("pk")
    ]


def prompts_and_info(*, seed: int = 0, per_category: int = 50, project_ids=()) -> tuple[list, dict]:
    """The run's prompts (chat turns, keyed by check) and the suite it asks, stored on the run for scoring."""
    project_ids = sorted(set(project_ids or ()))
    checks = build_suite(seed=seed, per_category=per_category) + project_checks(project_ids)
    canonical = json.dumps(checks, sort_keys=True, ensure_ascii=False)
    prompts = [
        {
            "position": i,
            "record_id": None,
            "check_key": c["key"],
            "messages": [{"role": "user", "content": c["prompt"]}],
        }
        for i, c in enumerate(checks)
    ]
    info = {
        "seed": seed,
        "per_category": per_category,
        "project_ids": project_ids,
        "count": len(checks),
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "checks": checks,
    }
    return prompts, info
