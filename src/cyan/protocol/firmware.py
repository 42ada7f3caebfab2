"""Firmware personalities: how each Device OS generation behaves on the wire (protocol.md §0.1, §13.2).

The byte format never changed; the behaviour did. A `Firmware` answers every question the device role
asks ("does it piggyback variable values?", "how long does it wait for the server Hello?") from the
Device OS version, so the simulator behaves like the real firmware it claims to be, and the recordings
in tests/vectors decide where the source and the recordings disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .framing import DEVICE_MAX_FRAME_LENGTH_LEGACY, DEVICE_MAX_FRAME_LENGTH_NEW
from .messages import HelloFlag

__all__ = ["DEVICE_OS_0_6_1", "DEVICE_OS_3_1_0", "Firmware", "Platform", "Stack"]


class Stack(enum.Enum):
    LEGACY = "legacy"  # SparkProtocol: Core, and Photon/P1 up to 0.7.x
    NEW = "new"  # particle::protocol::Protocol: Photon/P1 0.8.0 to 3.3.x


class Platform(enum.IntEnum):
    CORE = 0
    GCC = 3  # the Linux virtual device
    PHOTON = 6
    P1 = 8


@dataclass(frozen=True, slots=True)
class Firmware:
    """A Device OS version on a platform."""

    version: tuple[int, int, int]
    platform: int = Platform.PHOTON
    #: Advertised as spark/hardware/max_binary (2.x and older) or in the Hello (3.x) (§5, §6.4).
    max_binary_size: int = 262144
    ota_chunk_size: int = 512
    #: What a 3.x Hello reports as the maximum message size (§5).
    max_message_size: int = 960
    #: The system module version (3103 for 3.1.0, 105 for 0.6.1): in a 3.x Hello (§5), and the system
    #: part's "v" in the system Describe (§6.7).
    module_version: int = 0
    #: Updates by OTA protocol v3 only, and says so in its Hello (flag 0x80), as Gen 3 and P2 devices do from
    #: 3.0 (udp-dtls.md §1.5); the legacy UpdateBegin is then dropped unread.
    ota_protocol_v3: bool = False

    @property
    def stack(self) -> Stack:
        return Stack.LEGACY if self.version < (0, 8, 0) or self.platform == Platform.CORE else Stack.NEW

    @property
    def legacy(self) -> bool:
        return self.stack is Stack.LEGACY

    @property
    def hello_flags(self) -> HelloFlag:
        """§0.1 / §5: 0 up to 1.1, 0x06 from 1.2, 0x16 from 2.0, 0x36 from 2.2."""
        flags = HelloFlag(0)
        if self.legacy or self.version < (1, 2, 0):
            return flags
        flags |= HelloFlag.DIAGNOSTICS | HelloFlag.IMMEDIATE_UPDATES
        if self.version >= (2, 0, 0):
            flags |= HelloFlag.GOODBYE
        if self.version >= (2, 2, 0):
            flags |= HelloFlag.DEVICE_INITIATED_DESCRIBE
        if self.ota_protocol_v3:
            flags |= HelloFlag.OTA_PROTOCOL_V3
        return flags

    @property
    def hello_has_system_info(self) -> bool:
        """3.x appends system version, message and binary limits and chunk size to the Hello (§5)."""
        return not self.legacy and self.version >= (3, 0, 0)

    @property
    def hello_wait(self) -> float:
        """How long the device waits for the server Hello: 2 s legacy, 4 s new (§5)."""
        return 2.0 if self.legacy else 4.0

    @property
    def message_id_little_endian(self) -> bool:
        """The first message id is salt[0..1] + 1, big-endian (legacy) or little-endian (new) (§3)."""
        return not self.legacy

    @property
    def random_token_seed(self) -> bool:
        """From 2.0 the token counter starts at a random value; legacy uses salt[2] (§3)."""
        return not self.legacy and self.version >= (2, 0, 0)

    @property
    def posts_application_describe(self) -> bool:
        return not self.legacy and self.version >= (2, 0, 0)

    @property
    def posts_system_describe(self) -> bool:
        return not self.legacy and self.version >= (2, 2, 0)

    @property
    def separate_describe_reply(self) -> bool:
        """2.0+: empty ACK, then a CON 2.05; before: piggybacked ACK 2.05 (§6.2)."""
        return not self.legacy and self.version >= (2, 0, 0)

    @property
    def separate_variable_reply(self) -> bool:
        """1.5+: empty ACK, then NON 2.05; before: piggybacked ACK 2.05 (§0.1, §6.6)."""
        return not self.legacy and self.version >= (1, 5, 0)

    @property
    def fresh_id_on_ping_and_signal_ack(self) -> bool:
        """The new stack ACKs a server ping or signal with a new message id of its own (§6.1)."""
        return not self.legacy

    @property
    def drops_on_unknown_code(self) -> bool:
        """The legacy stack closes the connection on a code it does not know (§6.1)."""
        return self.legacy

    @property
    def requires_request_token(self) -> bool:
        """The new stack rejects function and variable requests without a 1-byte token (§6.1)."""
        return not self.legacy

    @property
    def publishes_hardware_events(self) -> bool:
        """spark/hardware/max_binary and ota_chunk_size events; 3.x reports them in the Hello (§5)."""
        return not self.hello_has_system_info

    @property
    def publishes_update_settings(self) -> bool:
        return not self.legacy and self.version >= (2, 0, 0)

    @property
    def max_incoming_frame(self) -> int:
        return DEVICE_MAX_FRAME_LENGTH_LEGACY if self.legacy else DEVICE_MAX_FRAME_LENGTH_NEW

    @property
    def max_name(self) -> int:
        """Function and variable names: 12 bytes legacy, 64 new (§10)."""
        return 12 if self.legacy else 64

    @property
    def max_function_argument(self) -> int:
        """Legacy takes < 64 bytes, new ≤ 622 (§6.5)."""
        return 63 if self.legacy else 622

    @property
    def max_event_name(self) -> int:
        return 63 if self.legacy else 64

    @property
    def max_event_data(self) -> int:
        return 255 if self.legacy else 622

    # -- OTA (protocol.md §7, tests/vectors/ota/README.md) ------------------------------------------

    @property
    def answers_fast_chunks(self) -> bool:
        """0.6.x answers every first-pass fast-OTA chunk with an empty ACK and ChunkReceived; 0.7.0 stopped
        (OTA README D1, v0.7.0-rc.1 `64e32e25f`). The new stack never answers a fast chunk (§7.1)."""
        return self.legacy and self.version < (0, 7, 0)

    @property
    def ota_result_event(self) -> bool:
        """0.6.x answers UpdateDone with a bare ACK and reports the result as the private event
        ``spark/device/ota_result``, then waits 1 s before it resets (OTA README D2)."""
        return self.legacy and (0, 6, 1) <= self.version < (0, 7, 0)

    @property
    def numeric_ota_result(self) -> bool:
        """2.x and later report ``{"r":<system error>}`` (0 = valid); older firmware ``{"r":"ok"|"error"}``."""
        return not self.legacy and self.version >= (2, 0, 0)

    @property
    def finishes_update_itself(self) -> bool:
        """After ChunkMissed the legacy stack completes the update by itself once nothing is missing, and
        repeats ChunkMissed after 3 s of silence; the new stack waits for another UpdateDone (§7.1)."""
        return self.legacy

    @property
    def max_missed_chunks(self) -> int:
        """Indexes in one ChunkMissed: 50 legacy, at most 40 new (§10 ``MISSED_CHUNKS_TO_SEND``)."""
        return 50 if self.legacy else 40

    @property
    def reports_ota_flag(self) -> bool:
        """The Hello's "OTA succeeded" flag after an update (§7.2). The Linux virtual device's HAL never
        sets it (OTA README D4); real Photons do."""
        return self.platform != Platform.GCC


#: The two generations recorded in tests/vectors, on a Photon. (The recordings themselves come from the
#: Linux virtual device: platform 3, max_binary_size 102400.)
DEVICE_OS_0_6_1 = Firmware(version=(0, 6, 1), module_version=105)
DEVICE_OS_3_1_0 = Firmware(version=(3, 1, 0), module_version=3103)
