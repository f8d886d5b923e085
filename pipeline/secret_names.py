"""Which settings hold secrets, by name: environment variables (whose values are scrubbed from
what MLflow and the results get) and DVC remote options (which stay in each node's own
settings, never in a trial's config)."""
from __future__ import annotations

import re

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return SECRET_NAME.search(name) is not None
