"""Which settings hold secrets, by name: environment variables (whose values are scrubbed from
what MLflow and the results get) and DVC remote options (which stay in each node's own
settings, never in a trial's config); and the scrubbing."""
from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


def environment_secrets() -> list[str]:
    """Values of environment variables whose names say they are secret (4+ characters), the
    longest first (a secret that contains another is scrubbed whole)."""
    return sorted({value for name, value in os.environ.items()
                   if is_secret(name) and len(value) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every one of `secrets` replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
