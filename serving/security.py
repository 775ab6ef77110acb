"""API keys: stored as SHA-256 digests, compared in constant time against every digest.

    python -m serving.security new-key         # prints a fresh key and the digest to configure
    python -m serving.security hash-key        # reads a key on stdin, prints its digest
    python -m serving.security ensure-dev-key  # local runs: a key in .cache, its digest in .env

Keys are random 256-bit tokens, so an unsalted SHA-256 is enough to keep them out of config
files and logs (a password would need a slow hash; these are not passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

DEV_KEY_FILE = Path(".cache/serving/dev-api-key")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in ``SKIN_API_KEY_HASHES`` for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def match_key(key: str, digests: Sequence[str]) -> str | None:
    """The digest that ``key`` matches, or None.

    Compares against every stored digest with ``hmac.compare_digest`` and never stops early,
    so the time taken says nothing about which digest, or how much of one, matched.
    """
    candidate = hash_key(key)
    found: str | None = None
    for digest in digests:
        if hmac.compare_digest(candidate, digest):
            found = digest
    return found


def client_id(digest: str) -> str:
    """A short, non-secret name for a key, for records and logs (a prefix of its digest)."""
    return digest[:12]


class RedactAccessLog(logging.Filter):
    """uvicorn's access log names the client's address, and a query string may carry anything
    a client put there: both are personal data. The address becomes ``-``, the query goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # (client, method, path, http, status)
            record.args = ("-", args[1], str(args[2]).split("?")[0], *args[3:])
        return True


def redact_access_log() -> None:
    """Install :class:`RedactAccessLog` on uvicorn's access logger (once per process)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactAccessLog) for f in logger.filters):
        logger.addFilter(RedactAccessLog())


def ensure_dev_key(env_file: Path = Path(".env"), key_file: Path = DEV_KEY_FILE) -> bool:
    """For local runs (``make``): unless ``env_file`` already sets ``SKIN_API_KEY_HASHES``,
    make a key, keep it in ``key_file`` (mode 600) and append its digest to ``env_file``.

    Idempotent: returns False and changes nothing when keys are already configured.
    """
    lines = env_file.read_text().splitlines() if env_file.exists() else []
    if any(line.strip().startswith("SKIN_API_KEY_HASHES=") for line in lines):
        return False
    key = new_key()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    with env_file.open("a") as f:
        f.write(f"SKIN_API_KEY_HASHES={hash_key(key)}\n")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["new-key"]:
        key = new_key()
        print(f"key:    {key}\ndigest: {hash_key(key)}")
        print("Give the key to the client; set SKIN_API_KEY_HASHES=<digest> on the gateway.")
        return 0
    if args == ["hash-key"]:
        key = sys.stdin.readline().strip()
        if not key:
            print("error: give the key on stdin, e.g. `printf %s KEY | ...`", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    if args == ["ensure-dev-key"]:
        if ensure_dev_key():
            print(f"local API key written to {DEV_KEY_FILE}; its digest appended to .env")
        return 0
    print(
        "usage: python -m serving.security {new-key | hash-key < key | ensure-dev-key}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
