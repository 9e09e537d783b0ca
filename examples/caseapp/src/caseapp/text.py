"""Realistic-looking text for the sample data, deterministic from a seed (no I/O).

The generator does not build text per row in Python: it hands PostgreSQL pools of
titles and sentences built here once, and each row picks from them by a hash of
its ordinal, so 500,000 cases cost a few hash lookups each rather than a Python
string per word.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NOUNS = (
    "invoice",
    "payment",
    "refund",
    "contract",
    "delivery",
    "order",
    "account",
    "address",
    "policy",
    "claim",
    "meter",
    "reading",
    "subscription",
    "warranty",
    "shipment",
    "parcel",
    "password",
    "login",
    "report",
    "statement",
    "certificate",
    "permit",
    "application",
    "complaint",
    "request",
    "appointment",
    "inspection",
    "repair",
    "replacement",
    "device",
    "router",
    "connection",
    "tariff",
    "discount",
    "deposit",
    "transfer",
    "card",
    "loan",
    "mortgage",
    "premium",
    "document",
    "signature",
    "form",
    "portal",
    "notification",
)
ADJECTIVES = (
    "missing",
    "duplicate",
    "late",
    "wrong",
    "incomplete",
    "damaged",
    "urgent",
    "new",
    "cancelled",
    "blocked",
    "pending",
    "disputed",
    "expired",
    "incorrect",
    "partial",
    "unpaid",
    "overdue",
    "lost",
    "changed",
    "unexpected",
)
VERBS = (
    "checked",
    "confirmed",
    "escalated",
    "forwarded",
    "rejected",
    "approved",
    "updated",
    "requested",
    "received",
    "sent",
    "reviewed",
    "corrected",
    "scheduled",
    "postponed",
    "reopened",
    "documented",
    "verified",
    "refunded",
    "replaced",
    "noted",
)
SUBJECTS = (
    "The customer",
    "Our team",
    "Billing",
    "The technician",
    "Support",
    "The courier",
    "The bank",
    "Legal",
    "The account manager",
    "Quality assurance",
    "The supplier",
)
TASK_VERBS = (
    "Check",
    "Call back about",
    "Confirm",
    "Send",
    "Review",
    "Schedule",
    "Update",
    "Escalate",
    "Collect",
    "Approve",
    "Correct",
    "Archive",
)
CONNECTORS = ("after", "before", "because of", "despite", "regarding", "following", "for")
FIRST_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elif",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Marta",
    "Noah",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
)
LAST_NAMES = (
    "Almeida",
    "Becker",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Horvat",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Laurent",
    "Meyer",
    "Novak",
    "Okafor",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Umarov",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhang",
)
COUNTRIES = ("DE", "FR", "NL", "BE", "AT", "CH", "PL", "IT", "ES", "PT", "SE", "DK", "GB", "IE")
TAGS = (
    "billing",
    "vip",
    "escalated",
    "legal",
    "technical",
    "fraud-check",
    "callback",
    "waiting-on-customer",
    "warranty",
    "complaint",
    "gdpr",
    "field-visit",
)
ASSIGNEES = tuple(
    f"{first.lower()}.{last.lower()}" for first in FIRST_NAMES[:12] for last in LAST_NAMES[:2]
)
# (extension, content type, typical size in bytes)
FILE_TYPES = (
    ("pdf", "application/pdf", 250_000),
    ("png", "image/png", 400_000),
    ("jpg", "image/jpeg", 900_000),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", 60_000),
    ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", 40_000),
    ("txt", "text/plain", 3_000),
    ("eml", "message/rfc822", 30_000),
)
SUPPORT_ADDRESS = "support@caseapp.example"

TITLE_POOL_SIZE = 2048
SENTENCE_POOL_SIZE = 4096


@dataclass(frozen=True)
class TextPools:
    """Everything the generator picks text from; equal seeds give equal pools."""

    titles: tuple[str, ...]
    task_titles: tuple[str, ...]
    sentences: tuple[str, ...]
    people: tuple[str, ...]
    countries: tuple[str, ...]
    tags: tuple[str, ...]
    assignees: tuple[str, ...]
    file_stems: tuple[str, ...]


def title(rng: random.Random) -> str:
    adjective, noun, other = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)
    return f"{adjective.capitalize()} {noun} {rng.choice(CONNECTORS)} {other}"


def task_title(rng: random.Random) -> str:
    return f"{rng.choice(TASK_VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def sentence(rng: random.Random) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), "the", rng.choice(ADJECTIVES)]
    words += [rng.choice(NOUNS), rng.choice(CONNECTORS), "the", rng.choice(NOUNS)]
    return " ".join(words) + "."


def text_pools(seed: int) -> TextPools:
    rng = random.Random(seed)
    return TextPools(
        titles=tuple(title(rng) for _ in range(TITLE_POOL_SIZE)),
        task_titles=tuple(task_title(rng) for _ in range(TITLE_POOL_SIZE)),
        sentences=tuple(sentence(rng) for _ in range(SENTENCE_POOL_SIZE)),
        people=tuple(f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES),
        countries=COUNTRIES,
        tags=TAGS,
        assignees=ASSIGNEES,
        file_stems=tuple(
            f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{index}" for index in range(256)
        ),
    )
