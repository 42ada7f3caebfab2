"""The record layer: epochs, 48-bit sequence numbers, the replay window and record protection
(RFC 6347 §4.1), with draft-05 connection ids and Particle's 253/254 variants (udp-dtls.md §1.3, §1.4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._crypto import RecordProtection
from ._errors import Reason
from ._wire import DTLS_1_2, ContentType, Record, encode_record

__all__ = ["MAX_SEQUENCE", "Opened", "RecordLayer", "ReplayWindow"]

#: Sequence numbers are 48 bits (RFC 6347 §4.1); a sender must not wrap (§4.1: renegotiate or close).
MAX_SEQUENCE = (1 << 48) - 1
#: mbedtls pads the CID inner plaintext to a multiple of 16 (MBEDTLS_SSL_CID_PADDING_GRANULARITY, MT `ssl.h`).
CID_PADDING = 16


class ReplayWindow:
    """The sliding window of RFC 6347 §4.1.2.6, 64 records wide as in mbedtls.

    `top` is the highest sequence number accepted so far (-1: none); bit i of `bitmap` is set when
    `top - i` has been accepted. A record is marked only after it authenticated (§4.1.2.6)."""

    __slots__ = ("bitmap", "top")

    SIZE = 64

    def __init__(self, top: int = -1, bitmap: int = 0) -> None:
        self.top = top
        self.bitmap = bitmap

    def is_fresh(self, sequence: int) -> bool:
        if sequence > self.top:
            return True
        offset = self.top - sequence
        return offset < self.SIZE and not (self.bitmap >> offset) & 1

    def mark(self, sequence: int) -> None:
        if sequence > self.top:
            shift = sequence - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
            self.top = sequence
        else:
            self.bitmap |= 1 << (self.top - sequence)


@dataclass(frozen=True, slots=True)
class Opened:
    """A record that authenticated: its real content type (from the inner plaintext for CID records)."""

    content_type: int
    epoch: int
    sequence: int
    payload: bytes
    #: It came as type 253 or 254: the device is resuming a saved session (udp-dtls.md §1.4).
    moved: bool


class RecordLayer:
    """Both directions of one association. Keys for an epoch are installed when known; the caller
    decides when to start writing in it (after its ChangeCipherSpec)."""

    __slots__ = (
        "_read",
        "_windows",
        "_write",
        "own_cid",
        "peer_cid",
        "write_epoch",
        "write_limit",
        "write_sequences",
    )

    def __init__(self, *, own_cid: bytes = b"", peer_cid: bytes = b"") -> None:
        #: The CID records sent to us carry (ours), and the one we put in records we send (the peer's).
        self.own_cid = own_cid
        self.peer_cid = peer_cid
        self._read: dict[int, RecordProtection | None] = {0: None}
        self._write: dict[int, RecordProtection | None] = {0: None}
        self._windows: dict[int, ReplayWindow] = {0: ReplayWindow()}
        self.write_epoch = 0
        self.write_sequences: dict[int, int] = {0: 0}
        #: No protected record is sealed at or past this sequence number: the end of the block of numbers the
        #: caller reserved for this process, when another may carry the same session on (docs/dtls.md).
        self.write_limit = MAX_SEQUENCE + 1

    # -- keys and state ------------------------------------------------------------------------------

    def install(self, epoch: int, read: RecordProtection, write: RecordProtection) -> None:
        self._read[epoch] = read
        self._write[epoch] = write
        self._windows.setdefault(epoch, ReplayWindow())
        self.write_sequences.setdefault(epoch, 0)

    def can_read(self, epoch: int) -> bool:
        return epoch in self._read

    def window(self, epoch: int) -> ReplayWindow:
        return self._windows.setdefault(epoch, ReplayWindow())

    def set_window(self, epoch: int, window: ReplayWindow) -> None:
        self._windows[epoch] = window

    def forget_epoch(self, epoch: int) -> None:
        """Drop an old epoch's read state once the peer cannot need it any more."""
        self._read.pop(epoch, None)
        self._windows.pop(epoch, None)

    # -- writing ---------------------------------------------------------------------------------------

    def seal(self, content_type: int, payload: bytes, *, epoch: int | None = None, move: bytes | None = None) -> bytes:
        """One record. `move`: Particle's move-session marking (udp-dtls.md §1.4): b"" to send a CID record
        as type 253, a device id to send application data as type 254 with the id trailer."""
        epoch = self.write_epoch if epoch is None else epoch
        sequence = self.write_sequences[epoch]
        if sequence > MAX_SEQUENCE:
            # Never wrap: a repeated sequence number would repeat a CCM nonce under the same key.
            raise OverflowError("the 48-bit record sequence number is exhausted")
        protection = self._write[epoch]
        if protection is not None and sequence >= self.write_limit:
            raise OverflowError(f"sequence number {sequence} is past the reserved limit {self.write_limit}")
        self.write_sequences[epoch] = sequence + 1
        if protection is None:
            return encode_record(content_type, epoch, sequence, payload)
        epoch_and_seq = struct.pack(">H", epoch) + sequence.to_bytes(6, "big")
        cid = self.peer_cid
        if cid:
            # draft-05 §4: DTLSInnerPlaintext = content ‖ real type ‖ zeros; §5: the additional data
            # adds cid and cid_length, as MT `ssl_extract_add_data_from_record` does.
            pad = (CID_PADDING - (len(payload) + 1) % CID_PADDING) % CID_PADDING
            inner = payload + bytes([content_type]) + bytes(pad)
            prefix = struct.pack(">BH", ContentType.CID, DTLS_1_2) + cid + bytes([len(cid)])
            record = encode_record(
                ContentType.CID, epoch, sequence, protection.seal(epoch_and_seq, prefix, inner), cid=cid
            )
            if move is not None:
                record = bytes([ContentType.ALT_CID]) + record[1:]
            return record
        prefix = struct.pack(">BH", content_type, DTLS_1_2)
        record = encode_record(content_type, epoch, sequence, protection.seal(epoch_and_seq, prefix, payload))
        if move and content_type == ContentType.APPLICATION_DATA:
            record = bytes([ContentType.MOVE_SESSION]) + record[1:] + move + bytes([len(move)])
        return record

    # -- reading ---------------------------------------------------------------------------------------

    def open(self, record: Record) -> Opened | Reason:
        """The authenticated content of a record, or why it is discarded (RFC 6347 §4.1.2.7: silently,
        never ending the association)."""
        epoch = record.epoch
        if epoch not in self._read:
            return Reason.UNEXPECTED_EPOCH
        protection = self._read[epoch]
        moved = record.wire_type in (ContentType.ALT_CID, ContentType.MOVE_SESSION)
        if protection is None and (record.is_cid or moved):
            return Reason.BAD_RECORD  # CID and move records exist only once encrypted
        if protection is not None:
            if record.is_cid:
                if record.cid != self.own_cid:
                    return Reason.UNKNOWN_CONNECTION_ID
            elif self.own_cid and not moved:
                # Once a CID is negotiated the peer must use it (draft-05 §3); a CID-less record in an
                # encrypted epoch is not from our device.
                return Reason.UNKNOWN_CONNECTION_ID
        window = self._windows[epoch]
        if not window.is_fresh(record.sequence):
            return Reason.REPLAYED
        if protection is None:
            window.mark(record.sequence)
            return Opened(record.wire_type, epoch, record.sequence, record.fragment, False)
        epoch_and_seq = struct.pack(">H", epoch) + record.sequence.to_bytes(6, "big")
        aad_type = record.aad_type
        if record.is_cid:
            prefix = struct.pack(">BH", aad_type, record.version) + record.cid + bytes([len(record.cid)])
        else:
            prefix = struct.pack(">BH", aad_type, record.version)
        plaintext = protection.open(epoch_and_seq, prefix, record.fragment)
        if plaintext is None:
            return Reason.DECRYPT_FAILED
        content_type = aad_type
        if record.is_cid:
            inner = plaintext.rstrip(b"\x00")
            if not inner:
                return Reason.BAD_RECORD
            content_type, plaintext = inner[-1], inner[:-1]
        window.mark(record.sequence)
        return Opened(content_type, epoch, record.sequence, plaintext, moved)
