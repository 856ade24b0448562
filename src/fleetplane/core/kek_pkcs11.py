"""A key-encryption key held inside a PKCS#11 token (an HSM, or SoftHSM2 in tests).

Data keys are wrapped with CKM_AES_GCM by ``C_Encrypt`` inside the token, so the AES
key itself never leaves it; keys marked extractable or non-sensitive are refused.
The ``python-pkcs11`` binding is imported only when a ``Pkcs11Kek`` is built.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from fleetplane.core.envelope import (
    KEY_BYTES,
    NONCE_BYTES,
    WRAP_AAD,
    EnvelopeError,
    KekConfigError,
    split_wrapped,
)

if TYPE_CHECKING:
    import pkcs11
    from pkcs11._pkcs11 import lib as Lib

BINDING = "python-pkcs11==0.10.1"
_SPEC_KEYS = ("module", "token", "key", "pin-env")
_load_lock = threading.Lock()
_logins: dict[tuple[str, str], bytes] = {}  # (module, token) -> SHA-256 of the PIN we logged in with


def _binding() -> ModuleType:
    try:
        import pkcs11
    except ImportError:
        raise EnvelopeError(f"PKCS#11 KEKs need the {BINDING} package (pip install {BINDING})") from None
    return pkcs11


def _load_lib(module_path: str) -> Lib:
    """Load (once per process: the binding caches it, so ``C_Initialize`` runs once) a PKCS#11 module."""
    p11 = _binding()
    if not os.path.isfile(module_path):
        raise KekConfigError(f"PKCS#11 module {module_path} does not exist")
    with _load_lock:
        try:
            lib: Lib = p11.lib(module_path)
        except p11.PKCS11Error as exc:
            raise KekConfigError(f"cannot load PKCS#11 module {module_path}: {exc}") from None
    return lib


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class Pkcs11Kek:
    """Wraps data keys with an AES key (by label) on a PKCS#11 token, inside the token."""

    def __init__(self, module_path: str, token_label: str, pin: str, key_label: str) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.key_label = key_label
        self._key_id = f"pkcs11:{token_label}/{key_label}"
        self._lock = threading.Lock()
        self._p11 = _binding()
        self._mech = self._p11.Mechanism.AES_GCM
        self._session = self._open(pin)
        try:
            self._key = self._find_key()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_spec(cls, spec: str) -> Pkcs11Kek:
        """Parse ``module=...;token=...;key=...;pin-env=VAR``; the PIN comes from ``$VAR`` only."""
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if name == "pin":
                raise KekConfigError(
                    "pkcs11 KEK spec must not carry the PIN; use pin-env=VAR to name a variable"
                )
            if not sep or not value.strip():
                raise KekConfigError(f"pkcs11 KEK spec part {part!r} is not of the form name=value")
            if name not in _SPEC_KEYS:
                raise KekConfigError(
                    f"pkcs11 KEK spec has unknown part {name!r} (expected {', '.join(_SPEC_KEYS)})"
                )
            if name in fields:
                raise KekConfigError(f"pkcs11 KEK spec names {name!r} twice")
            fields[name] = value.strip()
        missing = [k for k in _SPEC_KEYS if k not in fields]
        if missing:
            raise KekConfigError(f"pkcs11 KEK spec is missing {', '.join(missing)}")
        pin = os.environ.get(fields["pin-env"])
        if not pin:
            raise KekConfigError(
                f"environment variable {fields['pin-env']} (pin-env) holding the PKCS#11 PIN is not set"
            )
        return cls(fields["module"], fields["token"], pin, fields["key"])

    @classmethod
    def generate_key(cls, module_path: str, token_label: str, pin: str, key_label: str) -> Pkcs11Kek:
        """Create a non-extractable AES-256 key on the token (refused if the label exists), then use it."""
        p11 = _binding()
        with _open_session(_load_lib(module_path), token_label, pin, rw=True) as session:
            try:
                session.get_key(object_class=p11.ObjectClass.SECRET_KEY, label=key_label)
            except p11.NoSuchKey:
                pass
            else:
                raise EnvelopeError(f"token {token_label!r} already holds a key labelled {key_label!r}")
            session.generate_key(
                p11.KeyType.AES,
                KEY_BYTES * 8,
                label=key_label,
                store=True,
                capabilities=p11.MechanismFlag.ENCRYPT | p11.MechanismFlag.DECRYPT,
                template={
                    p11.Attribute.SENSITIVE: True,
                    p11.Attribute.EXTRACTABLE: False,
                    p11.Attribute.PRIVATE: True,
                },
            )
        return cls(module_path, token_label, pin, key_label)

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        try:
            with self._lock:
                self._check_open()
                sealed = self._key.encrypt(data_key, mechanism=self._mech, mechanism_param=self._gcm(nonce))
        except self._p11.PKCS11Error as exc:
            raise EnvelopeError(f"KEK {self._key_id!r} failed to wrap a data key: {_describe(exc)}") from None
        return nonce + bytes(sealed)

    def unwrap(self, blob: bytes) -> bytes:
        nonce, sealed = split_wrapped(blob, self._key_id)
        try:
            with self._lock:
                self._check_open()
                plain = self._key.decrypt(sealed, mechanism=self._mech, mechanism_param=self._gcm(nonce))
        except self._p11.PKCS11Error as exc:
            raise EnvelopeError(
                f"wrapped data key failed to unwrap under KEK {self._key_id!r} (tampered?): {_describe(exc)}"
            ) from None
        return bytes(plain)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def __enter__(self) -> Pkcs11Kek:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pkcs11Kek(key_id={self._key_id!r}, module={self.module_path!r})"

    def _check_open(self) -> None:
        if self._session is None:
            raise EnvelopeError(f"KEK {self._key_id!r} is closed")

    def _gcm(self, nonce: bytes) -> Any:
        return self._p11.mechanisms.GCMParams(nonce, WRAP_AAD, 128)

    def _open(self, pin: str) -> pkcs11.Session | None:
        return _open_session(_load_lib(self.module_path), self.token_label, pin, rw=False)

    def _find_key(self) -> Any:
        p11 = self._p11
        assert self._session is not None
        try:
            key = self._session.get_key(object_class=p11.ObjectClass.SECRET_KEY, label=self.key_label)
        except p11.NoSuchKey:
            raise KekConfigError(
                f"token {self.token_label!r} has no secret key labelled {self.key_label!r}"
            ) from None
        except p11.MultipleObjectsReturned:
            raise KekConfigError(
                f"token {self.token_label!r} has several keys labelled {self.key_label!r}"
            ) from None
        if key.key_type != p11.KeyType.AES or key.key_length != KEY_BYTES * 8:
            raise KekConfigError(
                f"key {self.key_label!r} on token {self.token_label!r} is not an AES-256 key"
            )
        if key[p11.Attribute.EXTRACTABLE] or not key[p11.Attribute.SENSITIVE]:
            raise KekConfigError(
                f"key {self.key_label!r} on token {self.token_label!r} is extractable or not sensitive; "
                "a KEK must never leave the token"
            )
        return key


def _open_session(lib: Lib, token_label: str, pin: str, *, rw: bool) -> pkcs11.Session:
    p11 = _binding()
    try:
        token = lib.get_token(token_label=token_label)
    except p11.NoSuchToken:
        raise KekConfigError(f"no PKCS#11 token labelled {token_label!r} in module {lib.so}") from None
    login = (lib.so, token_label)
    digest = hashlib.sha256(pin.encode()).digest()
    try:
        session: pkcs11.Session = token.open(rw=rw, user_pin=pin)
        _logins[login] = digest
    except p11.UserAlreadyLoggedIn:
        # Login is per process, not per session: another KEK on this token already logged in, so
        # the token cannot check this PIN; compare it with the PIN of the login we made ourselves.
        if not hmac.compare_digest(_logins.get(login, digest), digest):
            raise KekConfigError(
                f"PKCS#11 login to token {token_label!r} failed: "
                "PinIncorrect (already logged in with another PIN)"
            ) from None
        session = token.open(rw=rw)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked, p11.PinExpired) as exc:
        raise KekConfigError(f"PKCS#11 login to token {token_label!r} failed: {type(exc).__name__}") from None
    except p11.PKCS11Error as exc:
        raise EnvelopeError(f"cannot open a session on token {token_label!r}: {_describe(exc)}") from None
    return session
