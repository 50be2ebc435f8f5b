"""Pieces of SQL text for the PL/pgSQL functions Goldset writes out (the trainer's and the generation
worker's write functions): identifiers and literals quoted as PostgreSQL quotes them, column names taken
from the models so that a renamed field cannot drift from the function body."""

from collections.abc import Iterable

from django.db.models import Model


def ident(name: str) -> str:
    """A quoted identifier: ``"name"``, with embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted string literal: ``'text'``, with embedded quotes doubled."""
    return "'" + text.replace("'", "''") + "'"


def text_array(names: Iterable[str]) -> str:
    """``ARRAY['a', 'b']::text[]``."""
    return "ARRAY[" + ", ".join(literal(n) for n in names) + "]::text[]"


def column(model: type[Model], name: str) -> str:
    """The quoted column of a model field, by field name."""
    return ident(model._meta.get_field(name).column)
