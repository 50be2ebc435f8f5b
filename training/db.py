"""Which database connection the training code uses.

The gpu worker runs with ``GOLDSET_DB_ALIAS=training``: every read and write of the task goes through
the "training" alias, which on PostgreSQL logs in as the trainer role (no privilege on eval tables).
The web process and the default worker use "default". Task code passes ``using=training_db()``
explicitly instead of relying on the router, and never follows a foreign key lazily (that would pick
the router's alias, not this one).
"""

import os


def training_db() -> str:
    return os.environ.get("GOLDSET_DB_ALIAS") or "default"
