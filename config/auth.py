"""The model backend, with the per-request user lookup as a written-out query (see config.rawsql)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.core.exceptions import ValidationError

from config import rawsql


class ModelBackend(DjangoModelBackend):
    def get_user(self, user_id):
        model = get_user_model()
        try:
            pk = model._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        sql = f"SELECT {rawsql.columns(model, 'u')} FROM {rawsql.table(model)} u WHERE u.{model._meta.pk.column} = %s"
        rows = rawsql.fetch(sql, [pk])
        user = rawsql.load(model, rows[0]) if rows else None
        return user if user is not None and self.user_can_authenticate(user) else None
