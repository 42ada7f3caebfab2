"""Passwords and access tokens, as they are kept.

Passwords are hashed with scrypt (stdlib `hashlib.scrypt`, memory-hard); tokens are 160 random bits shown
once and stored only as their SHA-256, so neither a database dump nor a log line yields a usable secret.
Who may log in, and what is audited, is `cyan.app.accounts`'.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

__all__ = ["DEFAULT_TOKEN_LIFETIME", "check_username", "hash_password", "hash_token", "verify_password"]

#: Particle's default: a token is good for 90 days.
DEFAULT_TOKEN_LIFETIME = 90 * 24 * 3600
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
#: An e-mail address (what the Particle CLI logs in with) or a plain name; nothing that could break a line of a
#: log, a table or a stream.
_USERNAME = re.compile(r"[^\s@]{1,64}@[^\s@]{1,190}|[A-Za-z0-9._-]{1,64}")


def check_username(username: str) -> str:
    """The username as stored (lowercase); ValueError for one that is not an e-mail address or a plain name."""
    if not isinstance(username, str) or not _USERNAME.fullmatch(username) or not username.isprintable():
        raise ValueError(f"{str(username)[:80]!r} is not a valid username: use an e-mail address")
    return username.lower()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    encoded = [base64.b64encode(x).decode() for x in (salt, digest)]
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
