"""Envelope encryption: local KEKs, a real SoftHSM2 token, tamper and context checks, rotation."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetplane.core.envelope import (
    ARMOUR_PREFIX,
    Envelope,
    EnvelopeError,
    EnvKek,
    FileKek,
    KekConfigError,
    KeyEncryptionKey,
    is_sealed,
    kek_from_settings,
)
from fleetplane.core.kek_pkcs11 import Pkcs11Kek

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SETUP_SCRIPT = "scripts/system-deps.sh (run by make test)"
PIN = "4711-fleet"
CTX = b"acme/Secret/default/db-password"
SECRET = b"correct horse battery staple -- a distinctive plaintext 0123456789"
_labels = itertools.count()


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token: str
    pin: str


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A real SoftHSM2 token initialised in a temp dir (SoftHSM reads the config once per process)."""
    util = shutil.which("softhsm2-util")
    if not os.path.isfile(SOFTHSM_MODULE) or util is None:
        pytest.fail(
            f"SoftHSM2 is required ({SOFTHSM_MODULE} and softhsm2-util): run {SETUP_SCRIPT} "
            "(as root; `make test` runs it) to install the Debian softhsm2 package"
        )
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        token = f"fleetplane-{os.getpid()}"
        subprocess.run(
            [util, "--init-token", "--free", "--label", token, "--pin", PIN, "--so-pin", "so-" + PIN],
            check=True,
            capture_output=True,
        )
        yield SoftHsm(SOFTHSM_MODULE, token, PIN)


@pytest.fixture
def hsm_kek(softhsm: SoftHsm) -> Iterator[Pkcs11Kek]:
    kek = Pkcs11Kek.generate_key(softhsm.module, softhsm.token, softhsm.pin, f"kek-{next(_labels)}")
    with kek:
        yield kek


@pytest.fixture
def file_kek(tmp_path: Path) -> FileKek:
    return FileKek(tmp_path / "kek")


def env_kek(monkeypatch: pytest.MonkeyPatch, var: str = "FP_TEST_KEK", key: bytes | None = None) -> EnvKek:
    monkeypatch.setenv(var, base64.b64encode(key or os.urandom(32)).decode())
    return EnvKek(var)


def split(blob: bytes) -> dict[str, bytes]:
    """The v1 layout, independently of the module, so the tests can aim at each part."""
    id_len = blob[1]
    pos = 2 + id_len
    (wlen,) = struct.unpack_from(">H", blob, pos)
    wrapped_at = pos + 2
    check_at = wrapped_at + wlen
    return {
        "kek_id": blob[2:pos],
        "wrapped": blob[wrapped_at:check_at],
        "check": blob[check_at : check_at + 4],
        "nonce": blob[check_at + 4 : check_at + 16],
        "ciphertext": blob[check_at + 16 :],
        "wrapped_at": bytes([wrapped_at]),
        "check_at": bytes([check_at]),
    }


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


# --- round trips with each provider ------------------------------------------------------------


def test_round_trip_file_kek(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    blob = env.seal(SECRET, context=CTX)
    assert blob[0] == 1 and split(blob)["kek_id"] == file_kek.key_id.encode()
    assert env.open(blob, context=CTX) == SECRET
    assert env.open(env.seal(b"", context=CTX), context=CTX) == b""


def test_round_trip_env_kek(monkeypatch: pytest.MonkeyPatch) -> None:
    env = Envelope(env_kek(monkeypatch))
    assert env.open(env.seal(SECRET, context=CTX), context=CTX) == SECRET


def test_round_trip_pkcs11_kek_in_softhsm(hsm_kek: Pkcs11Kek) -> None:
    env = Envelope(hsm_kek)
    assert hsm_kek.key_id == f"pkcs11:{hsm_kek.token_label}/{hsm_kek.key_label}"
    blobs = [env.seal(SECRET + bytes([i]), context=CTX) for i in range(20)]
    assert [env.open(b, context=CTX) for b in blobs] == [SECRET + bytes([i]) for i in range(20)]
    assert split(blobs[0])["kek_id"] == hsm_kek.key_id.encode()


@pytest.fixture(scope="session")
def shared_kek(tmp_path_factory: pytest.TempPathFactory) -> FileKek:
    return FileKek(tmp_path_factory.mktemp("kek") / "kek")


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=2048), context=st.binary(min_size=1, max_size=64))
def test_round_trip_property(shared_kek: FileKek, plaintext: bytes, context: bytes) -> None:
    env = Envelope(shared_kek)
    assert env.open(env.seal(plaintext, context=context), context=context) == plaintext


def test_text_armour_is_json_safe_and_detected(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    text = env.seal_text("pässwörd", context=CTX)
    assert text.startswith(ARMOUR_PREFIX) and text.isascii()
    assert json.loads(json.dumps({"v": text}))["v"] == text
    assert env.open_text(text, context=CTX) == "pässwörd".encode()
    assert is_sealed(text)
    assert env.seal_text(SECRET, context=CTX) != env.seal_text(SECRET, context=CTX)  # fresh key + nonce
    for not_sealed in (
        "hunter2",
        "",
        ARMOUR_PREFIX,
        ARMOUR_PREFIX + "!!!",
        text[:20],
        "fpenc:v2:" + text[9:],
    ):
        assert not is_sealed(not_sealed), not_sealed
    assert not is_sealed(None) and not is_sealed({"v": text})  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError, match="is not sealed"):
        env.open_text("hunter2", context=CTX)


# --- refusals -----------------------------------------------------------------------------------


def test_wrong_context_is_refused(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    blob = env.seal(SECRET, context=CTX)
    with pytest.raises(
        EnvelopeError, match="sealed for a different context than 'acme/Secret/default/other'"
    ):
        env.open(blob, context=b"acme/Secret/default/other")


def test_context_is_bound_by_gcm_not_only_by_the_check_bytes(file_kek: FileKek) -> None:
    """Forge the diagnostic context check: AES-GCM's associated data must still refuse it."""
    env = Envelope(file_kek)
    blob = env.seal(SECRET, context=CTX)
    other = b"acme/Secret/default/other"
    forged_check = env.seal(b"x", context=other)
    at = split(blob)["check_at"][0]
    forged = blob[:at] + split(forged_check)["check"] + blob[at + 4 :]
    with pytest.raises(EnvelopeError, match="failed authentication: ciphertext or nonce was tampered"):
        env.open(forged, context=other)


def test_tampered_ciphertext_is_refused(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    blob = env.seal(SECRET, context=CTX)
    for index in (len(blob) - 1, len(blob) - 20, split(blob)["check_at"][0] + 4):  # tag, body, nonce
        with pytest.raises(EnvelopeError, match="failed authentication: ciphertext or nonce was tampered"):
            env.open(flip(blob, index), context=CTX)


def test_tampered_wrapped_key_is_refused(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    blob = env.seal(SECRET, context=CTX)
    at = split(blob)["wrapped_at"][0] + 20
    with pytest.raises(
        EnvelopeError, match=f"wrapped data key failed authentication under KEK '{file_kek.key_id}'"
    ):
        env.open(flip(blob, at), context=CTX)


@pytest.mark.parametrize("provider", ["file", "pkcs11"])
def test_every_single_bit_flip_is_refused(provider: str, request: pytest.FixtureRequest) -> None:
    kek = request.getfixturevalue("file_kek" if provider == "file" else "hsm_kek")
    env = Envelope(kek)
    blob = env.seal(SECRET, context=CTX)
    for index in range(len(blob)):
        with pytest.raises(EnvelopeError):
            env.open(flip(blob, index), context=CTX)
    for cut in range(len(blob)):
        with pytest.raises(EnvelopeError):
            env.open(blob[:cut], context=CTX)
    with pytest.raises(EnvelopeError, match="unsupported envelope version 2"):
        env.open(b"\x02" + blob[1:], context=CTX)


def test_blob_under_another_kek_names_the_kek_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealer = FileKek(tmp_path / "a")
    blob = Envelope(sealer).seal(SECRET, context=CTX)
    other = env_kek(monkeypatch)
    with pytest.raises(
        EnvelopeError, match=f"sealed under KEK '{sealer.key_id}', which is not configured"
    ) as err:
        Envelope(other).open(blob, context=CTX)
    assert other.key_id in str(err.value)


def test_pkcs11_tampered_wrapped_key_is_refused(hsm_kek: Pkcs11Kek) -> None:
    env = Envelope(hsm_kek)
    blob = env.seal(SECRET, context=CTX)
    at = split(blob)["wrapped_at"][0] + 20
    with pytest.raises(EnvelopeError, match=f"failed to unwrap under KEK '{hsm_kek.key_id}'"):
        env.open(flip(blob, at), context=CTX)


def test_empty_context_is_refused(file_kek: FileKek) -> None:
    env = Envelope(file_kek)
    with pytest.raises(EnvelopeError, match="context must be non-empty"):
        env.seal(SECRET, context=b"")
    with pytest.raises(EnvelopeError, match="context must be non-empty"):
        env.open(env.seal(SECRET, context=CTX), context=b"")


# --- what the blob does not contain ------------------------------------------------------------


class _RecordingKek:
    def __init__(self, inner: KeyEncryptionKey) -> None:
        self.inner = inner
        self.data_keys: list[bytes] = []

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def wrap(self, data_key: bytes) -> bytes:
        self.data_keys.append(data_key)
        return self.inner.wrap(data_key)

    def unwrap(self, blob: bytes) -> bytes:
        return self.inner.unwrap(blob)


@pytest.mark.parametrize("provider", ["file", "pkcs11"])
def test_blob_contains_neither_plaintext_nor_data_key(provider: str, request: pytest.FixtureRequest) -> None:
    kek = _RecordingKek(request.getfixturevalue("file_kek" if provider == "file" else "hsm_kek"))
    env = Envelope(kek)
    blob = env.seal(SECRET, context=CTX)
    text = env.seal_text(SECRET, context=CTX)
    assert len(kek.data_keys) == 2 and all(len(k) == 32 for k in kek.data_keys)
    armoured = base64.b64decode(text[len(ARMOUR_PREFIX) :])
    for sealed, data_key in ((blob, kek.data_keys[0]), (armoured, kek.data_keys[1])):
        for needle in (SECRET, SECRET[:16], SECRET[-16:], data_key, data_key[:8], data_key[-8:]):
            assert needle not in sealed
    assert base64.b64encode(SECRET[:24]).decode() not in text
    assert env.open(blob, context=CTX) == SECRET


# --- FileKek and EnvKek --------------------------------------------------------------------------


def test_file_kek_creates_owner_only_key(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "fleetplane" / "kek"
    old = os.umask(0)  # the widest umask: the file must still be 0600
    try:
        kek = FileKek(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert FileKek(path).key_id == kek.key_id  # loaded, not regenerated
    assert FileKek(tmp_path / "other").key_id != kek.key_id


def test_file_kek_refuses_group_or_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_bytes(os.urandom(32))
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(KekConfigError, match=f"has mode {mode:04o}: .*chmod 600 {path}"):
            FileKek(path)
    path.chmod(0o600)
    assert FileKek(path).key_id.startswith("aes256:")


def test_file_kek_refuses_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_bytes(os.urandom(16))
    path.chmod(0o600)
    with pytest.raises(KekConfigError, match=f"key file {path} holds 16 bytes; a KEK must be exactly 32"):
        FileKek(path)


def test_same_key_in_file_and_env_is_the_same_kek(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_kek = FileKek(tmp_path / "kek")
    moved = env_kek(monkeypatch, key=(tmp_path / "kek").read_bytes())
    assert moved.key_id == file_kek.key_id
    assert Envelope(moved).open(Envelope(file_kek).seal(SECRET, context=CTX), context=CTX) == SECRET


def test_env_kek_errors_name_the_variable_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FP_KEK_UNSET", raising=False)
    with pytest.raises(KekConfigError, match="environment variable FP_KEK_UNSET is not set"):
        EnvKek("FP_KEK_UNSET")
    monkeypatch.setenv("FP_KEK_BAD", "not*base64*at-all")
    with pytest.raises(KekConfigError, match="environment variable FP_KEK_BAD is not valid base64") as err:
        EnvKek("FP_KEK_BAD")
    assert "not*base64" not in str(err.value)
    short = base64.b64encode(b"k" * 24).decode()
    monkeypatch.setenv("FP_KEK_SHORT", short)
    with pytest.raises(KekConfigError, match="FP_KEK_SHORT holds 24 bytes") as err:
        EnvKek("FP_KEK_SHORT")
    assert short not in str(err.value)


# --- rotation ------------------------------------------------------------------------------------


def test_rewrap_keeps_ciphertext_and_moves_to_the_new_kek(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = FileKek(tmp_path / "old"), env_kek(monkeypatch)
    blob = Envelope(old).seal(SECRET, context=CTX)
    rotated = Envelope(old).rewrap(blob, new)
    before, after = split(blob), split(rotated)
    assert after["kek_id"] == new.key_id.encode() and after["wrapped"] != before["wrapped"]
    assert (after["check"], after["nonce"], after["ciphertext"]) == (
        before["check"],
        before["nonce"],
        before["ciphertext"],
    )
    assert Envelope(new).open(rotated, context=CTX) == SECRET
    with pytest.raises(EnvelopeError, match=f"sealed under KEK '{new.key_id}'"):
        Envelope(old).open(rotated, context=CTX)

    during = Envelope(new, previous=[old])  # read old and new while a rotation runs
    assert during.open(blob, context=CTX) == SECRET
    assert during.needs_rewrap(blob) and not during.needs_rewrap(rotated)
    text = Envelope(old).seal_text(SECRET, context=CTX)
    assert Envelope(new).open_text(during.rewrap_text(text, new), context=CTX) == SECRET


def test_rewrap_between_file_kek_and_hsm(file_kek: FileKek, hsm_kek: Pkcs11Kek) -> None:
    blob = Envelope(file_kek).seal(SECRET, context=CTX)
    in_hsm = Envelope(file_kek).rewrap(blob, hsm_kek)
    assert split(in_hsm)["ciphertext"] == split(blob)["ciphertext"]
    assert Envelope(hsm_kek).open(in_hsm, context=CTX) == SECRET
    back = Envelope(hsm_kek).rewrap(in_hsm, file_kek)
    assert Envelope(file_kek).open(back, context=CTX) == SECRET


# --- PKCS#11 specifics ---------------------------------------------------------------------------


def test_pkcs11_key_is_sensitive_and_usable_from_a_second_instance(
    softhsm: SoftHsm, hsm_kek: Pkcs11Kek
) -> None:
    import pkcs11

    blob = Envelope(hsm_kek).seal(SECRET, context=CTX)
    with Pkcs11Kek(softhsm.module, softhsm.token, softhsm.pin, hsm_kek.key_label) as again:
        assert Envelope(again).open(blob, context=CTX) == SECRET
    lib = pkcs11.lib(softhsm.module)
    with lib.get_token(token_label=softhsm.token).open() as session:  # logged in by hsm_kek
        key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=hsm_kek.key_label)
        assert key[pkcs11.Attribute.SENSITIVE] and not key[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]
    with pytest.raises(EnvelopeError, match="already holds a key labelled"):
        Pkcs11Kek.generate_key(softhsm.module, softhsm.token, softhsm.pin, hsm_kek.key_label)


def test_pkcs11_refuses_an_extractable_key(softhsm: SoftHsm) -> None:
    import pkcs11

    label = f"weak-{next(_labels)}"
    with pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token).open(rw=True, user_pin=PIN) as s:
        s.generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            store=True,
            template={pkcs11.Attribute.EXTRACTABLE: True, pkcs11.Attribute.SENSITIVE: False},
        )
    with pytest.raises(
        KekConfigError, match="is extractable or not sensitive; a KEK must never leave the token"
    ):
        Pkcs11Kek(softhsm.module, softhsm.token, PIN, label)


def test_pkcs11_errors_are_clear(softhsm: SoftHsm) -> None:
    with pytest.raises(KekConfigError, match=f"login to token '{softhsm.token}' failed: PinIncorrect"):
        Pkcs11Kek(softhsm.module, softhsm.token, "wrong-pin", "kek")
    with pytest.raises(KekConfigError, match=f"token '{softhsm.token}' has no secret key labelled 'absent'"):
        Pkcs11Kek(softhsm.module, softhsm.token, PIN, "absent")
    with pytest.raises(KekConfigError, match="no PKCS#11 token labelled 'no-such-token'"):
        Pkcs11Kek(softhsm.module, "no-such-token", PIN, "kek")
    with pytest.raises(KekConfigError, match=r"PKCS#11 module /nonexistent/libp11\.so does not exist"):
        Pkcs11Kek("/nonexistent/libp11.so", softhsm.token, PIN, "kek")


def test_wrong_pin_is_refused_while_another_kek_holds_the_login(softhsm: SoftHsm, hsm_kek: Pkcs11Kek) -> None:
    """PKCS#11 logins are per process: with hsm_kek logged in, the token itself no longer checks PINs."""
    with pytest.raises(KekConfigError, match="failed: PinIncorrect \\(already logged in with another PIN\\)"):
        Pkcs11Kek(softhsm.module, softhsm.token, "wrong-pin", hsm_kek.key_label)
    with Pkcs11Kek(softhsm.module, softhsm.token, PIN, hsm_kek.key_label) as same_pin:
        assert same_pin.unwrap(hsm_kek.wrap(b"k" * 32)) == b"k" * 32


def test_closed_pkcs11_kek_refuses(hsm_kek: Pkcs11Kek) -> None:
    hsm_kek.close()
    with pytest.raises(EnvelopeError, match=f"KEK '{hsm_kek.key_id}' is closed"):
        hsm_kek.wrap(os.urandom(32))


def test_missing_binding_names_the_package(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)
    with pytest.raises(EnvelopeError, match=r"need the python-pkcs11==0\.10\.1 package"):
        Pkcs11Kek(softhsm.module, softhsm.token, PIN, "kek")


def test_core_imports_without_the_binding() -> None:
    code = (
        "import sys; sys.modules['pkcs11'] = None\n"
        "import fleetplane.core.envelope, fleetplane.core.kek_pkcs11\n"
        "from fleetplane.core.envelope import Envelope, EnvKek\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- kek_from_settings ---------------------------------------------------------------------------


def test_settings_build_each_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hsm_kek: Pkcs11Kek
) -> None:
    file_kek = kek_from_settings(f"file:{tmp_path / 'k'}")
    assert isinstance(file_kek, FileKek) and file_kek.path == tmp_path / "k"
    key = os.urandom(32)
    monkeypatch.setenv("FP_SPEC_KEK", base64.b64encode(key).decode())
    assert isinstance(kek_from_settings("env:FP_SPEC_KEK"), EnvKek)
    monkeypatch.setenv("FLEETPLANE_HSM_PIN", PIN)
    spec = (
        f"pkcs11:module={hsm_kek.module_path};token={hsm_kek.token_label};"
        f"key={hsm_kek.key_label};pin-env=FLEETPLANE_HSM_PIN"
    )
    from_spec = kek_from_settings(spec)
    assert isinstance(from_spec, Pkcs11Kek) and from_spec.key_id == hsm_kek.key_id
    with from_spec:
        assert Envelope(from_spec).open(Envelope(hsm_kek).seal(SECRET, context=CTX), context=CTX) == SECRET


P11 = "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=fleetplane"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "must start with 'file:', 'env:' or 'pkcs11:' \\(got scheme ''\\)"),
        ("vault:secret/kek", "got scheme 'vault'"),
        ("/etc/kek", "got scheme '/etc/kek'"),
        ("file:", "'file:' needs a path"),
        ("env:", "'' is not a valid environment variable name"),
        ("env:1BAD", "'1BAD' is not a valid environment variable name"),
        (f"{P11};key=kek;pin=1234", "must not carry the PIN; use pin-env=VAR"),
        (f"{P11};key=kek", "missing pin-env"),
        ("pkcs11:token=t", "missing module, key, pin-env"),
        (f"{P11};key=kek;pin-env=FP_PIN;slot=3", "unknown part 'slot'"),
        (f"{P11};key=kek;key=other;pin-env=FP_PIN", "names 'key' twice"),
        (f"{P11};key;pin-env=FP_PIN", "part 'key' is not of the form name=value"),
        (f"{P11};key=kek;pin-env=FP_PIN_UNSET", "variable FP_PIN_UNSET \\(pin-env\\) .* is not set"),
    ],
)
def test_settings_errors_name_the_bad_part(spec: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FP_PIN_UNSET", raising=False)
    with pytest.raises(KekConfigError, match=message) as err:
        kek_from_settings(spec)
    assert "1234" not in str(err.value)
