"""Secret encryption: Fernet keys through MultiFernet, newest first.

Keys come from ``DIGITORN_ENCRYPTION_KEYS`` (comma-separated) or, when unset, from a key file
generated once in the data dir with mode 0600. Encryption always uses the first key; decryption
tries each, so rotation is: prepend a new key, run ``digitorn secret rotate``, drop the old one.
"""

from __future__ import annotations

import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from digitorn_site.errors import DigitornError


class DecryptionError(DigitornError):
    error_code = "DECRYPTION_FAILED"
    default_message = (
        "A stored secret cannot be decrypted with the configured keys; check DIGITORN_ENCRYPTION_KEYS "
        "(the key that encrypted it must still be in the list)."
    )


def _load_keys() -> list[str]:
    if settings.DIGITORN_ENCRYPTION_KEYS:
        return [k.strip() for k in settings.DIGITORN_ENCRYPTION_KEYS if k.strip()]
    path = settings.ENCRYPTION_KEY_FILE
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        key = Fernet.generate_key().decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process generated it first
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return [key]


@lru_cache(maxsize=1)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError) as exc:
        raise DigitornError(
            "DIGITORN_ENCRYPTION_KEYS holds a key that is not a valid Fernet key "
            "(32 url-safe base64-encoded bytes; make one with `digitorn secret genkey`)."
        ) from exc


def fernet() -> MultiFernet:
    return _fernet_for(tuple(_load_keys()))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError() from exc


def rotate(token: str) -> str:
    """Re-encrypt with the newest key."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError() from exc
