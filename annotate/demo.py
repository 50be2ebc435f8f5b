"""The built-in demo: a support assistant for an online shop ("Northwind Goods").

Everything is written here and varied from templates with a seeded generator, so the demo needs
no download and is the same on every machine. The policy the reviewers check answers against is
``GUIDELINES``. Three candidate "models" answer, each with a habit reviewers should catch:

- ``helpdesk-pro``: careful and correct (the reference behaviour);
- ``swiftreply-v2``: fine content, but *every* answer ends with "Thanks!", a tic a fine-tune would copy;
- ``policybot-mini``: sometimes curt, and sometimes states the wrong refund window (14 or 60 days).

Each row records its flaws under ``metadata["demo_flaws"]`` (response index → flaw names), so a
test or a curious admin can find them; reviewers are not shown metadata.

Train and eval do not share wording: the import decides each row's split from its content (seeded),
so the demo works that split out in advance and writes eval rows from their own templates (odd
template numbers of each topic, their own curt answers and chat openers) and train rows from the
others. A snapshot of the demo's training data then passes the contamination check against the
demo's eval set, while the flaws above stay in both.
"""

import random

from annotate.importers import content_hash

DEMO_SEED = 2026
DEMO_SIZE = 300
GOOD, THANKS, TERSE = "helpdesk-pro", "swiftreply-v2", "policybot-mini"

GUIDELINES = """Northwind Goods support policy (what a correct answer says):
- Refunds: within 30 days of delivery, to the original payment method, 5-7 business days after we receive the item.
- Returns are free with the prepaid label from Orders > Return an item. Exchanges for another size are free too.
- Shipping: standard 3-5 business days, express 1-2 business days; tracking appears within 24 hours of dispatch.
- Password reset links last 1 hour. Two-factor codes come from the authenticator app, never by email.
- A duplicate charge is an authorization hold; it drops off in 3-5 business days.
- Subscriptions can be cancelled any time in Account > Plan; access continues to the end of the paid period.

A good answer is correct, specific to the customer's case, kind without filler, and ends when the help ends.
Watch for answers that state a wrong refund window, that are curt, or that end every reply with the same tic."""

FIRST_NAMES = ["Maya", "Tom", "Priya", "Lukas", "Ana", "Kenji", "Fatima", "Oliver", "Chloe", "Diego", "Amara", "Jonas"]
PRODUCTS = [
    "wool throw blanket",
    "ceramic pour-over set",
    "running jacket",
    "standing desk mat",
    "linen duvet cover",
    "cast-iron skillet",
    "noise-cancelling headphones",
    "hiking boots",
    "bamboo cutting board",
    "desk lamp",
    "yoga mat",
    "espresso grinder",
]
OPENERS = ["", "Hi! ", "Hello! ", "Hey there! ", "Good morning. ", "Quick question: "]
CLOSERS = ["", " Thanks.", " Appreciate it.", " Any help is welcome.", " This is urgent."]


def _order(rng: random.Random) -> str:
    return f"NW-{rng.randint(100000, 999999)}"


# Each topic: (question, correct answer) templates and a curt answer. Slots: {name} {product} {order} {days}.
Topic = tuple[list[tuple[str, str]], str]

REFUND_WINDOW = "within 30 days of delivery"

TOPICS: dict[str, Topic] = {
    "refunds": (
        [
            (
                "I returned my {product} (order {order}) last week. When will I get my money back?",
                "Thanks for sending the {product} back. Once it reaches our warehouse, the refund for {order} goes to "
                "your original payment method within 5-7 business days, and you'll get an email when it's issued.",
            ),
            (
                "Can I still get a refund on the {product} I bought {days} days ago?",
                "You can get a full refund " + REFUND_WINDOW + ". Start it from Orders > Return an item; the "
                "refund reaches your original payment method 5-7 business days after we receive the {product}.",
            ),
            (
                "How long do refunds take to reach my card? Order {order}.",
                "Refunds go back to the card you paid with 5-7 business days after the return for {order} reaches "
                "our warehouse. Some banks take another day or two to show it.",
            ),
            (
                "The {product} arrived damaged. I want a refund, not a replacement.",
                "I'm sorry your {product} arrived damaged. You're entitled to a full refund " + REFUND_WINDOW + "; "
                "open Orders > Return an item, choose 'arrived damaged', and the prepaid label is free. The money "
                "is back on your original payment method 5-7 business days after we receive it.",
            ),
            (
                "What's your refund policy for a {product} that I opened but didn't use?",
                "Opened items are fine: you can return the {product} for a full refund " + REFUND_WINDOW + ", as long "
                "as it's unused and complete.",
            ),
        ],
        "Refunds take 5-7 business days.",
    ),
    "order_status": (
        [
            (
                "Where is my order {order}? It's been {days} days.",
                "I'm sorry for the wait. {order} left our warehouse and tracking normally appears within 24 hours of "
                "dispatch; standard delivery takes 3-5 business days. If tracking hasn't moved by tomorrow evening, "
                "reply here and I'll open a carrier trace.",
            ),
            (
                "My {product} still says 'processing'. Order {order}, is something wrong?",
                "Nothing is wrong: 'processing' means {order} is being packed. You'll get a tracking link by email "
                "within 24 hours of dispatch.",
            ),
            (
                "Can you tell me when order {order} will arrive?",
                "{order} ships with standard delivery, which takes 3-5 business days from dispatch. The tracking link "
                "in your confirmation email shows the carrier's estimate.",
            ),
            (
                "Tracking for {order} hasn't updated since Tuesday.",
                "Carriers sometimes skip scans between depots. If there's still no update for {order} after 2 business "
                "days, I'll open a trace with the carrier and, if it's lost, send a replacement at no cost.",
            ),
        ],
        "It's shipped. Check tracking.",
    ),
    "shipping": (
        [
            (
                "How long does express shipping take for a {product}?",
                "Express delivery takes 1-2 business days from dispatch; standard takes 3-5. Orders placed before "
                "2 pm usually leave the same day.",
            ),
            (
                "Do you ship to Canada? I'd like to order a {product}.",
                "Yes, we ship the {product} to Canada. Standard shipping takes 3-5 business days after customs; "
                "duties are shown at checkout so there are no surprises on delivery.",
            ),
            (
                "Can I upgrade order {order} to express shipping?",
                "If {order} hasn't been dispatched yet, yes: I can upgrade it to express (1-2 business days). The "
                "price difference is shown before you confirm.",
            ),
            (
                "What's the difference between standard and express delivery?",
                "Standard delivery takes 3-5 business days and express takes 1-2 business days from dispatch. "
                "Both come with tracking.",
            ),
        ],
        "Express is 1-2 days.",
    ),
    "account": (
        [
            (
                "I can't log in. The password reset link says it expired.",
                "Reset links are valid for 1 hour. Request a fresh one from the login page and use it right away; "
                "if it still fails, tell me and I'll send one manually.",
            ),
            (
                "How do I turn on two-factor authentication?",
                "Go to Account > Security and choose 'Turn on two-factor'. Scan the QR code with your authenticator "
                "app and enter the 6-digit code it shows.",
            ),
            (
                "I got an email with a login code I didn't ask for. Is my account hacked?",
                "We never send login codes by email: codes come only from your authenticator app, so don't use that "
                "code or click its links. To be safe, reset your password and check Account > Security for "
                "unknown devices.",
            ),
            (
                "How do I change the email address on my account? I'm {name}.",
                "Hi {name}, open Account > Profile and choose 'Change email'. We'll send a confirmation link to the "
                "new address; the change takes effect once you click it.",
            ),
        ],
        "Check your account settings.",
    ),
    "billing": (
        [
            (
                "I was charged twice for order {order}!",
                "I understand how worrying that is. The second line for {order} is an authorization hold, not a "
                "payment: it drops off your statement within 3-5 business days.",
            ),
            (
                "Where can I download an invoice for my {product}?",
                "Invoices for every order are in Account > Billing; choose the order with the {product} and click "
                "'Download invoice'. I can also email it to you.",
            ),
            (
                "Why is there a pending charge on my card for an order I cancelled?",
                "A cancelled order can leave an authorization hold. It isn't a payment, and it disappears within "
                "3-5 business days.",
            ),
            (
                "Can I pay for a {product} in instalments?",
                "Yes: choose 'Pay in 3' at checkout for orders over $50. There's no interest if each instalment is "
                "paid on time.",
            ),
        ],
        "It's a hold. It will go away.",
    ),
    "returns": (
        [
            (
                "How do I return a {product}? I don't have a printer for the label.",
                "Returns are free: open Orders > Return an item and choose the {product}. Pick 'QR code' instead of "
                "a printed label and show it at the drop-off point. Returns are accepted " + REFUND_WINDOW + ".",
            ),
            (
                "Can I exchange my {product} for a different size?",
                "Yes, exchanges for another size are free " + REFUND_WINDOW + ". Choose 'Exchange' in Orders > "
                "Return an item and we ship the new size as soon as the carrier scans your return.",
            ),
            (
                "Do I have to pay for return shipping on order {order}?",
                "No, returns are free: Orders > Return an item gives you a prepaid label for {order}, and returns are "
                "accepted " + REFUND_WINDOW + ".",
            ),
            (
                "It's been {days} days since delivery. Can I still return the {product}?",
                "Returns are accepted " + REFUND_WINDOW + ". Start it from Orders > Return an item and the prepaid "
                "label is free.",
            ),
        ],
        "Use the return form.",
    ),
    "subscriptions": (
        [
            (
                "How do I cancel my Northwind Plus subscription?",
                "You can cancel any time in Account > Plan. You keep the benefits until the end of the period you've "
                "paid for, and you won't be charged again.",
            ),
            (
                "If I cancel Northwind Plus today, do I lose free shipping immediately?",
                "No: after you cancel, free shipping and the other Plus benefits continue until the end of the "
                "period you've already paid for.",
            ),
            (
                "I was charged for Northwind Plus but I thought I cancelled. Help?",
                "I'm sorry about the confusion. Check Account > Plan: if the cancellation didn't go through, cancel "
                "there now and reply with the charge date; a renewal charged after a cancellation request is refunded.",
            ),
        ],
        "Cancel in settings.",
    ),
}

CHAT_OPENERS = [
    ("Hi, I need help with an order.", "Of course! Could you share your order number?"),
    ("Hello, is anyone there?", "Hi, I'm here to help. What can I do for you today?"),
    ("I have a problem with my account.", "I'm sorry to hear that. What's going on?"),
]
# Eval rows' chats open differently, so no training prompt repeats an eval prompt's opening turns.
EVAL_CHAT_OPENERS = [
    ("Good evening, quick support question.", "Good evening! Go ahead, I'm listening."),
    ("Are you a real person?", "I'm Northwind's support assistant. How can I help?"),
]
# Eval rows' curt answers (the train ones are each topic's own): short texts are compared whole.
EVAL_CURT = "See the help centre."


def _wrong_window(text: str, rng: random.Random) -> str:
    wrong = rng.choice(["14", "60"])
    return text.replace(REFUND_WINDOW, f"within {wrong} days of delivery")


def demo_rows(
    *, size: int = DEMO_SIZE, seed: int = DEMO_SEED, split_seed: int = DEMO_SEED, eval_share: float = 0.2
) -> list[dict]:
    """Import rows for the demo project: prompt or chat, two labelled responses, metadata and provenance.

    ``split_seed`` and ``eval_share`` are the project's: each row's split is worked out as the import will
    decide it, and eval rows come from eval templates only (see the module docstring)."""
    from annotate.services.imports import split_for

    rng = random.Random(seed)
    topics = list(TOPICS)
    kinds = ["preference"] * 5 + ["gold"] * 3 + ["rubric"] * 2
    provenances = ["production_log"] * 9 + ["human"] * 5 + ["distilled"] * 5 + ["llm_judged"]
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < size:
        attempts += 1
        if attempts > size * 40:
            raise ValueError(f"Cannot make {size} distinct demo rows from the templates; ask for fewer.")
        n = len(rows)
        topic = topics[n % len(topics)]
        templates, curt = TOPICS[topic]
        slots = {
            "name": rng.choice(FIRST_NAMES),
            "product": rng.choice(PRODUCTS),
            "order": _order(rng),
            "days": rng.randint(2, 45),
        }
        number = rng.randrange(len(templates))
        for_eval = number % 2 == 1
        template, answer = templates[number]
        question = rng.choice(OPENERS) + template.format(**slots) + rng.choice(CLOSERS)
        correct = answer.format(**slots)

        # The second candidate carries this row's flaw, from one of the two flawed models.
        if n % 2 == 0:
            other, other_model, flaws = correct + " Thanks!", THANKS, ["ends_with_thanks"]
        elif REFUND_WINDOW in correct and rng.random() < 0.7:
            other, other_model, flaws = _wrong_window(correct, rng), TERSE, ["wrong_refund_window"]
        else:
            other, other_model, flaws = (EVAL_CURT if for_eval else curt), TERSE, ["curt"]
        pair = [({"text": correct, "model": GOOD}, []), ({"text": other, "model": other_model}, flaws)]
        rng.shuffle(pair)
        responses = [r for r, _ in pair]
        demo_flaws = {str(i): f for i, (_, f) in enumerate(pair) if f}

        kind = kinds[n % len(kinds)]
        row: dict = {
            "responses": responses,
            "kind": kind,
            "provenance": provenances[rng.randrange(len(provenances))],
            "metadata": {"topic": topic, "customer": slots["name"], "demo_flaws": demo_flaws},
        }
        if n % 6 == 5:
            opener, reply = rng.choice(EVAL_CHAT_OPENERS if for_eval else CHAT_OPENERS)
            row["messages"] = [
                {"role": "system", "content": "You are Northwind Goods' support assistant. Follow the policy."},
                {"role": "user", "content": opener},
                {"role": "assistant", "content": reply},
                {"role": "user", "content": question.strip()},
            ]
        else:
            row["prompt"] = question.strip()
        key = content_hash(prompt=row.get("prompt", ""), messages=row.get("messages"), responses=responses)
        if key in seen:
            continue  # the templates repeated themselves: draw again, the import would only report it
        split = split_for(split_seed=split_seed, stratum=kind, content_hash=key, eval_share=eval_share)
        if (split == "eval") != for_eval:
            continue  # this template belongs to the other split: draw again
        seen.add(key)
        rows.append(row)
    return rows


DEMO_RUBRIC = [
    {
        "key": "helpfulness",
        "name": "Helpfulness",
        "scale": "ordinal",
        "levels": [
            {"value": 1, "label": "Unhelpful", "description": "Does not address the question.", "example": ""},
            {
                "value": 2,
                "label": "Weak",
                "description": "Touches the question, leaves the customer stuck.",
                "example": "",
            },
            {"value": 3, "label": "Adequate", "description": "Answers, but misses a useful next step.", "example": ""},
            {"value": 4, "label": "Good", "description": "Answers and says what happens next.", "example": ""},
            {
                "value": 5,
                "label": "Excellent",
                "description": "Specific, complete, anticipates the follow-up.",
                "example": "",
            },
        ],
    },
    {
        "key": "correctness",
        "name": "Correct per policy",
        "scale": "binary",
        "levels": [
            {"value": 1, "label": "Correct", "description": "Every fact matches the policy.", "example": ""},
            {
                "value": 0,
                "label": "Wrong",
                "description": "States a wrong window, price or step.",
                "example": "Refunds within 14 days.",
            },
        ],
    },
    {
        "key": "tone",
        "name": "Tone",
        "scale": "nominal",
        "levels": [
            {"value": "warm", "label": "Warm", "description": "Kind and professional.", "example": ""},
            {"value": "neutral", "label": "Neutral", "description": "Plain, neither warm nor cold.", "example": ""},
            {
                "value": "curt",
                "label": "Curt",
                "description": "Abrupt; the customer feels dismissed.",
                "example": "Use the form.",
            },
            {
                "value": "filler",
                "label": "Filler",
                "description": "Padded or with a repeated sign-off tic.",
                "example": "… Thanks!",
            },
        ],
    },
]


# Reviews the demo starts with: two reviewers have already worked through the training split, and they
# let some flaws slip, as real teams do, so the demo's first snapshot has something for the audit to find.
SLIPS = {"ends_with_thanks": 0.6, "wrong_refund_window": 0.25, "curt": 0.0}


def demo_reviews(*, project, reviewers: list) -> int:
    """Two reviewers' agreeing judgements of the demo's train-split gold and preference items; returns how many
    items were reviewed. A "Thanks!" answer is accepted over the correct one on 60% of its items and a wrong
    refund window on a quarter; a curt answer never. Eval items, rubric items and the third reviewer's queue
    are left for people."""
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import Item, Lease, Split, TaskKind
    from annotate.payloads import GoldAction, GoldPayload, PreferenceChoice, PreferencePayload
    from annotate.services.annotations import annotation_submit

    rng = random.Random(DEMO_SEED + 1)
    items = Item.objects.filter(project=project, split=Split.TRAIN, kind__in=[TaskKind.GOLD, TaskKind.PREFERENCE])
    done = 0
    for item in items.order_by("id"):
        flaws = item.metadata.get("demo_flaws", {})
        if len(item.responses) != 2 or len(flaws) != 1:
            continue
        ((flawed, names),) = ((int(i), f) for i, f in flaws.items())
        good = 1 - flawed
        pick = flawed if rng.random() < SLIPS.get(names[0], 0.0) else good
        if item.kind == TaskKind.GOLD:
            payload = GoldPayload(action=GoldAction.ACCEPT, answer=item.responses[pick]["text"], source_index=pick)
        else:
            payload = PreferencePayload(choice=PreferenceChoice.RESPONSE, chosen=pick, rejected=1 - pick)
        for reviewer in reviewers[:2]:
            lease = Lease.objects.create(
                project=project,
                item=item,
                reviewer=reviewer,
                display_order=rng.sample([0, 1], 2),
                expires_at=timezone.now() + timedelta(minutes=project.lease_minutes),
            )
            annotation_submit(project=project, lease_id=lease.pk, reviewer=reviewer, payload=payload)
        done += 1
    return done
