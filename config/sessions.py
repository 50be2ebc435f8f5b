"""Database sessions whose per-request read is a written-out query (see config.rawsql).

Same table, same semantics as ``django.contrib.sessions.backends.db``: only the lookup of the
session row on every request skips the ORM's query compilation."""

import logging

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.exceptions import SuspiciousOperation
from django.utils import timezone

from config import rawsql


class SessionStore(DatabaseSessionStore):
    def _get_session_from_db(self):
        model = self.model
        sql = (
            f"SELECT {rawsql.columns(model, 's')} FROM {rawsql.table(model)} s "
            "WHERE s.session_key = %s AND s.expire_date > %s"
        )
        try:
            rows = rawsql.fetch(sql, [self.session_key, rawsql.param(timezone.now())])
        except SuspiciousOperation as exc:
            logging.getLogger(f"django.security.{exc.__class__.__name__}").warning(str(exc))
            rows = []
        if not rows:
            self._session_key = None
            return None
        return rawsql.load(model, rows[0])
