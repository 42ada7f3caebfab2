"""RSA keys for Particle Gen 2 devices and their server, in the exact byte forms the firmware uses.

This package does no network or device I/O. It covers:

* device keys (RSA-1024, e=65537): generation, the firmware's fixed-width private-key layout, an emulation
  of the firmware's fixed-offset key parser, and the public key the device sends in the handshake
  (protocol.md §2.2, §A.3);
* server keys (RSA-2048, e=65537) and the server-key file with the server address, as the Particle CLI
  writes it and the firmware reads it (protocol.md §2.3, §11);
* loading keys from the file forms operators have, fingerprints, and writing private key files safely;
* the key areas of a device over DFU alt setting 1 (Photon/P1 DCT, Core external flash) and an inspection
  of what they will do: private key present, well-formed and firmware-parsable, held by the cloud, server
  key and address this cloud's or not (protocol.md §11, §12);
* an escrow file of device private keys under a passphrase (scrypt + AES-GCM).

Every problem with input bytes is reported as :class:`KeyFormatError` with a message that names the field.
"""

from ._codec import (
    check_device_public_key,
    check_server_public_key,
    device_public_key_der,
    encode_private_key_pem,
    encode_public_key_pem,
    fingerprint,
    load_private_key,
    load_public_key,
    public_key_der,
)
from ._dct import DctImage, KeyArea, KeyLayout, Platform, key_layout
from ._der import outer_sequence
from ._device import (
    DeviceKeyFields,
    device_public_key_der_from_private,
    encode_device_private_key,
    firmware_parse_device_key,
    generate_device_key,
    generate_server_key,
    is_firmware_parsable,
)
from ._ecc import (
    UDP_SERVER_KEY_ADDRESS_OFFSET,
    UDP_SERVER_KEY_FILE_SIZE,
    UDP_SERVER_KEY_PORT_OFFSET,
    encode_ec_private_key_der,
    encode_ec_private_key_pem,
    generate_ec_key,
    is_ec_key,
    load_ec_private_key,
    load_ec_public_key,
    udp_public_key_der,
)
from ._errors import DEVICE_KEY_BITS, PUBLIC_EXPONENT, SERVER_KEY_BITS, KeyFormatError, ServerAddressError
from ._escrow import ESCROW_FORMAT, ESCROW_VERSION, EscrowEntry, EscrowError, KeyEscrow, WrongPassphraseError
from ._inspect import (
    CloudFacts,
    Finding,
    KeyInspection,
    PrivateKeyReport,
    ServerKeyReport,
    addresses_of,
    inspect_file,
    inspect_image,
    inspect_key_areas,
    inspect_private_key,
)
from ._server_file import (
    DEFAULT_PORT,
    DEFAULT_UDP_PORT,
    PARTICLE_CLOUD_ADDRESS,
    PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT,
    AddressState,
    KeyState,
    Layout,
    ServerAddress,
    ServerKeyFile,
    build_server_key_file,
    build_udp_server_key_file,
    is_particle_cloud_server_key,
    parse_server_key_file,
    read_firmware_server_key,
)
from ._storage import write_private_key_file

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_UDP_PORT",
    "DEVICE_KEY_BITS",
    "ESCROW_FORMAT",
    "ESCROW_VERSION",
    "PARTICLE_CLOUD_ADDRESS",
    "PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT",
    "PUBLIC_EXPONENT",
    "SERVER_KEY_BITS",
    "UDP_SERVER_KEY_ADDRESS_OFFSET",
    "UDP_SERVER_KEY_FILE_SIZE",
    "UDP_SERVER_KEY_PORT_OFFSET",
    "AddressState",
    "CloudFacts",
    "DctImage",
    "DeviceKeyFields",
    "EscrowEntry",
    "EscrowError",
    "Finding",
    "KeyArea",
    "KeyEscrow",
    "KeyFormatError",
    "KeyInspection",
    "KeyLayout",
    "KeyState",
    "Layout",
    "Platform",
    "PrivateKeyReport",
    "ServerAddress",
    "ServerAddressError",
    "ServerKeyFile",
    "ServerKeyReport",
    "WrongPassphraseError",
    "addresses_of",
    "build_server_key_file",
    "build_udp_server_key_file",
    "check_device_public_key",
    "check_server_public_key",
    "device_public_key_der",
    "device_public_key_der_from_private",
    "encode_device_private_key",
    "encode_ec_private_key_der",
    "encode_ec_private_key_pem",
    "encode_private_key_pem",
    "encode_public_key_pem",
    "fingerprint",
    "firmware_parse_device_key",
    "generate_device_key",
    "generate_ec_key",
    "generate_server_key",
    "inspect_file",
    "inspect_image",
    "inspect_key_areas",
    "inspect_private_key",
    "is_ec_key",
    "is_firmware_parsable",
    "is_particle_cloud_server_key",
    "key_layout",
    "load_ec_private_key",
    "load_ec_public_key",
    "load_private_key",
    "load_public_key",
    "outer_sequence",
    "parse_server_key_file",
    "public_key_der",
    "read_firmware_server_key",
    "udp_public_key_der",
    "write_private_key_file",
]
