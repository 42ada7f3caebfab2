"""What the replays of real firmware recordings share: the recorded firmware, its keys, its randomness."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.protocol import Firmware, Platform
from cyan.testing import ScriptedRandom

# The recordings come from the Linux virtual device: platform 3, 102400-byte binaries (README).
GCC_3_1_0 = Firmware(version=(3, 1, 0), platform=Platform.GCC, max_binary_size=102400, module_version=3103)
GCC_0_6_1 = Firmware(version=(0, 6, 1), platform=Platform.GCC, max_binary_size=102400)


def recorded_key(path: Path) -> rsa.RSAPrivateKey:
    """A private key of the recordings (PEM)."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class RecordedDeviceRandom(ScriptedRandom):
    """The device role's randomness in a replay: padding for the 256-byte handshake message, then (new
    stack) the token seed the recorded device drew, once `armed`."""

    def __init__(self, token_seed: bytes) -> None:
        super().__init__(seed=7)
        self._token_seed = token_seed
        self.armed = False

    def __call__(self, size: int) -> bytes:
        if size == 1 and self._token_seed and self.armed:
            seed, self._token_seed = self._token_seed, b""
            return seed
        return super().__call__(size)
