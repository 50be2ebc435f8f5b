"""The former name of ``ensure_db_roles``, kept so existing deployment scripts keep working."""

from evalsets.management.commands.ensure_db_roles import Command as EnsureDbRoles


class Command(EnsureDbRoles):
    help = "Same as ensure_db_roles (its former name): " + EnsureDbRoles.help
