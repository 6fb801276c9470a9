"""BMC password fingerprints: how plan tells an unchanged secret from a changed one without seeing it.

A fingerprint is scrypt(password, salt): the salt is the controller's own (derived from its
secret key, ``GET /gitops/applied`` hands it out), so fingerprints of one controller never
match another's and a rainbow table made elsewhere is useless. The CLI computes the
fingerprint of the password the inventory names; the controller computes the same function
of the password it stores (``conductor/applied.py``), so both sides compare the one value
and the password itself never leaves either. Pure (hashlib only): the CLI and the controller
import it alike.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

# A fingerprint entry's key, set by the controller when it reads the record: the fingerprint that
# was recorded, when the password it stores now is another one (changed by hand since the apply).
RECORDED = "recorded_password"

# scrypt cost (RFC 7914 parameters): about 50 ms and 16 MiB per fingerprint, so a stolen
# fingerprint is not a cheap offline guess; computed once per distinct password and salt.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
DKLEN = 16


def fingerprint_uncached(password: str, salt: str) -> str:
    """The controller's entry point: it caches by a keyed digest, never by the plaintext."""
    digest = hashlib.scrypt(password.encode(), salt=salt.encode(), n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=DKLEN)
    return digest.hex()


@lru_cache(maxsize=1024)
def password_fingerprint(password: str, salt: str) -> str:
    """The CLI's: one short-lived process, the inventory's few distinct passwords."""
    return fingerprint_uncached(password, salt)
