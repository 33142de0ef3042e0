"""Recognises values that look like personal data, so that they are never stored.

sessionrec collects behaviour (which screens and items, when, how long), not who
someone is. Event properties are free text, so a client can put an e-mail
address or a phone number there by mistake; :func:`personal_data_kind` finds
such values and the ingestion path rejects the event (INVALID_ARGUMENT naming
the property) instead of storing it.

What counts (deliberately conservative, to keep false positives rare):

* **e-mail address**: ``local@domain.tld`` anywhere in the text;
* **payment card number**: 14-19 digits, optionally grouped by spaces or
  dashes, starting like a card network's numbers (2-6) and passing the Luhn
  check (a 13-digit millisecond timestamp is not one);
* **phone number**: 9-15 digits written like a phone number: starting with
  ``+`` (``+49 30 1234567``), or the whole value made of digits grouped by
  spaces, dashes or parentheses (``(555) 123-4567``, ``030 1234 5678``). A bare
  run of digits (an order number, a timestamp) and dotted numbers (versions, IP
  addresses) do not count.
"""

from __future__ import annotations

import re

__all__ = ["personal_data_kind"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])[2-6](?:[ -]?\d){13,18}(?![\d-])")
_PHONE_GROUPED = re.compile(r"\s*\(?\d[\d()]*(?:[ -]+\(?\d[\d()]*)+\s*")
_PHONE_PLUS = re.compile(r"(?<![\w+])\+\d[\d ()-]{7,}\d")


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _luhn(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def personal_data_kind(text: str) -> str | None:
    """``"e-mail address"``, ``"card number"``, ``"phone number"`` or None."""
    if not text or not any(ch.isdigit() or ch == "@" for ch in text):
        return None
    if "@" in text and _EMAIL.search(text):
        return "e-mail address"
    for match in _CARD.finditer(text):
        digits = _digits(match.group())
        if 14 <= len(digits) <= 19 and _luhn(digits):
            return "card number"
    candidates = []
    if _PHONE_GROUPED.fullmatch(text):
        candidates.append(text)
    candidates += [m.group() for m in _PHONE_PLUS.finditer(text)]
    for candidate in candidates:
        if 9 <= len(_digits(candidate)) <= 15:
            return "phone number"
    return None
