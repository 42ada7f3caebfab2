"""The diagnosis catalog: one entry per field failure of field-failures.md §2 (C1–C17).

Each entry says at which connection step the failure shows (field-failures.md §1.1), what it means, the
causes in their usual order of likelihood (the rules in `rules.py` re-rank them on the evidence), how to
tell them apart, what a Cyan server records for it, and the fix. The ids and the cause keys are stable:
they are part of the JSON output (docs/diagnostics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "Cause", "Entry", "entry"]


@dataclass(frozen=True, slots=True)
class Cause:
    key: str
    title: str
    #: "high", "medium" or "low": how often this cause is behind the symptom in the field.
    likelihood: str
    detail: str
    fix: str


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    title: str
    #: The step (a `DeviceStep` value) where the failure shows.
    step: str
    symptom: str
    meaning: str
    causes: tuple[Cause, ...]
    tell_apart: str
    server_side: str
    fix: str

    def cause(self, key: str) -> Cause:
        for cause in self.causes:
            if cause.key == key:
                return cause
        raise KeyError(f"{self.id} has no cause {key!r}")


_DFU_SERVER_KEY = (
    "Put the device in DFU mode (hold SETUP, tap RESET, release SETUP when it blinks yellow) and write this "
    "server's key file: `particle keys server server_key.der` with the file `cyan serve` wrote for your "
    "address, or `dfu-util -d 2b04:d006 -a 1 -s 2082 -D <file>`."
)
_KEYS_DOCTOR = (
    "In DFU mode, `particle keys doctor <device id>` makes a new key pair on the device and registers its public "
    "key (against a Cyan server: point the Particle CLI at it first, docs/api.md), or restore a backed-up key."
)

CATALOG: tuple[Entry, ...] = (
    Entry(
        "C1",
        "No Wi-Fi: blinking green, or dark blue after a power event",
        "wifi",
        "Blinking green that never ends, or blinking dark blue (listening mode) on a unit that used to work.",
        "The device never gets an IP address, so it never tries the cloud. When it forgot its Wi-Fi credentials "
        "after a brown-out, the same flash area (the DCT) also holds its keys, so expect key trouble next.",
        (
            Cause(
                "dct_erased",
                "Credentials lost when the configuration flash was erased",
                "high",
                "A brown-out or unstable supply can erase DCT sectors; credentials and keys live side by side there.",
                "Set up Wi-Fi again, then check the keys while you hold the device (expect C5/C6 otherwise).",
            ),
            Cause(
                "wifi_settings",
                "Wrong or changed credentials, or an access point the module cannot use",
                "medium",
                "New password, 5 GHz-only network, enterprise security, weak signal.",
                "Fix the credentials or the access point (2.4 GHz, WPA2-PSK) and move the device closer.",
            ),
        ),
        "Dark blue after a power event on a working unit means the DCT was damaged: treat its keys as suspect.",
        "Nothing: a device without Wi-Fi never reaches the server.",
        "Provision Wi-Fi again; then verify the device's keys and server key before it goes back into the field.",
    ),
    Entry(
        "C2",
        "No internet: blinking cyan, then 2 orange blinks",
        "S0",
        "Blinking cyan followed by two orange blinks; `Internet Test Failed`, `Handling cloud error: 2`.",
        "The device could not open the cloud socket, and its internet test (a TCP connection to 8.8.8.8 port 53) "
        "failed as well: the network it is on has no working path to the internet.",
        (
            Cause(
                "no_upstream",
                "No upstream internet on this network",
                "high",
                "The router has no uplink, a captive portal holds traffic, or DHCP gave an address without a route.",
                "Fix the network; test from another client on the same Wi-Fi.",
            ),
            Cause(
                "dns_port_blocked",
                "The network blocks TCP port 53 to public resolvers",
                "medium",
                "Then the internet test fails even though the internet works, and the real fault is elsewhere "
                "(DNS, or port 5683 blocked).",
                "Run the cloud-debug firmware: if it pings 8.8.8.8 but the test fails, look at DNS and port 5683.",
            ),
        ),
        "The cloud-debug firmware's `ping gateway=`, `ping addr 8.8.8.8=` and `device.spark.io=` lines show where "
        "the path breaks.",
        "Nothing arrives at the server (not even a TCP connection): the fault is outside the device and the cloud.",
        "Repair the network. Rate-limit reconnects in the application: the firmware's retries and Wi-Fi resets "
        "cost power and airtime.",
    ),
    Entry(
        "C3",
        "Cloud unreachable: blinking cyan, then 3 orange blinks",
        "S0",
        "Blinking cyan followed by three orange blinks; `Internet available, Cloud not reachable!`, "
        "`Handling cloud error: 3`, or a refused TCP connection.",
        "The internet works but the TCP connection to the cloud's port 5683 does not open.",
        (
            Cause(
                "server_down",
                "The server address points at a host that is down or not serving",
                "high",
                "Typical after a device was pointed at a local server that was later switched off; a refused "
                "connection means the host answers but nothing listens on the port.",
                "Start the server, or write the right address into the device's server key file.",
            ),
            Cause(
                "port_blocked",
                "A firewall blocks outbound TCP 5683",
                "high",
                "Corporate and guest networks often allow only web ports.",
                "Open outbound TCP 5683 to the server.",
            ),
            Cause(
                "stale_dns",
                "DNS resolves the server name to an old or wrong address",
                "medium",
                "Compare the `Resolved host ... to ...` address with the server's real one.",
                "Fix the DNS record, or use an IP-type server address in the key file.",
            ),
            Cause(
                "bad_server_key",
                "Bad server key or address in the device",
                "low",
                "Particle's docs note the 3-orange pattern is sometimes caused by wrong server keys.",
                _DFU_SERVER_KEY,
            ),
        ),
        "Cloud-debug's `could not connect to device server by CoAP` means port 5683 is blocked or closed; "
        "`Resolved host X to Y` with a Y that is not your server means a wrong address or a DNS override.",
        "No connection from the device's public address reaches the server.",
        "Open port 5683, correct the server address (DFU: `particle keys server <key> --host <address>`), or bring "
        "the server back.",
    ),
    Entry(
        "C4",
        "Handshake fails at the nonce (S1): fast cyan, 1 red blink",
        "S1",
        "`Could not receive nonce: N` (0.6.1+), `Handshake: could not receive nonce: N` (older), ProtocolError 25.",
        "The TCP connection opened but the 40-byte nonce that a Particle-protocol server sends first never arrived.",
        (
            Cause(
                "not_a_device_server",
                "The device reached something that is not a Particle device server",
                "high",
                "N = -19 or -18 at once: the peer accepted TCP and closed it (transparent proxy, captive portal, "
                "wrong IP in the server address, a UDP-only server).",
                "Check the server address on the device and what listens on port 5683 there.",
            ),
            Cause(
                "stalled",
                "A middlebox or an overloaded server holds the connection silently",
                "medium",
                "N = -1 after about 20 s: nothing was sent at all.",
                "Check server load and the network path; the server should send its nonce at once.",
            ),
            Cause(
                "ip_refused",
                "The server refuses this address (rate limit or ban)",
                "low",
                "A server that drops clients by IP closes before the nonce.",
                "Check the server's limits for the device's public address.",
            ),
        ),
        "Whether the server accepted a connection and sent its nonce: if it never saw the connection, the device "
        "talks to someone else.",
        "Cyan records `nonce_timeout` (it sent the nonce, the device never answered) or nothing when the device "
        "reached another host.",
        "Point the device at a real device server and remove whatever intercepts port 5683.",
    ),
    Entry(
        "C5",
        "The cloud refused the device (S5): fast cyan, 1 red blink, `Unable to receive key -19`",
        "S5",
        "`Unable to receive key -19` / `Cloud handshake failed, code=-19` (legacy), `Handshake failed: 26` "
        "(0.8+), red burst.",
        "The device sent its 256-byte encrypted handshake and the cloud closed the connection instead of sending "
        "the session key. The device found nothing wrong: the refusal is the cloud's, and only the cloud knows "
        "which check failed.",
        (
            Cause(
                "amnesia",
                "The device regenerated its key pair (amnesia)",
                "high",
                "Its private key area was erased (first byte 0xFF), so at boot it made a new RSA-1024 pair, "
                "blinking white meanwhile. The cloud still holds the old public key and refuses the new one.",
                "If the unit is yours (same address, power trouble in its history), accept the new key: "
                "`cyan policy rekey <id>` or approve the pending key (docs/self-healing.md); or restore the old key "
                "from a backup. " + _KEYS_DOCTOR,
            ),
            Cause(
                "wrong_server_key",
                "The device holds another server public key",
                "high",
                "A blank key (legacy firmware uses it as is), a corrupt one, or another cloud's key (Particle's, or "
                "an old local server's): the cloud cannot decrypt the handshake and cannot even tell which device "
                "it is.",
                _DFU_SERVER_KEY,
            ),
            Cause(
                "unknown_device",
                "The cloud does not know this device id",
                "medium",
                "Never registered here, removed, or refused by policy.",
                "Register it: `cyan devices add <id> --key <public key>` or `particle keys send <id> <key>`.",
            ),
            Cause(
                "other_cloud",
                "The device talks to another cloud, which refuses it",
                "medium",
                "Its server address points elsewhere (Particle's `device.spark.io` after its address was reset), "
                "so the refusal comes from that cloud and your server sees nothing.",
                "Write your server's key file (key and address) to the device. " + _DFU_SERVER_KEY,
            ),
            Cause(
                "network_drop",
                "Wi-Fi dropped or a middlebox cut the idle handshake",
                "low",
                "Then the code is -1 (a 20 s timeout), not -19.",
                "Check the Wi-Fi signal and the network path.",
            ),
        ),
        "Device side: `Read Server Address = type:255` or `Public Server Key was blank` point at the server key; "
        "blinking white at boot points at a regenerated key. Only the server can settle it: `cyan diagnose "
        "--server` or `cyan devices doctor`.",
        "Cyan records `nonce_mismatch` with no device id (wrong server key), `key_mismatch` with both fingerprints "
        "(amnesia), `unknown_device`/`key_rejected` (not provisioned), or nothing at all (another cloud).",
        "Depends on the cause; see each cause's fix. Without USB, only a cloud-side re-key (amnesia) or "
        "application code holding a key backup can repair a unit in the field.",
    ),
    Entry(
        "C6",
        "Session key not decryptable (S6): fast cyan, 1 orange blink, DECRYPTION_ERROR (6)",
        "S6",
        "`Cloud handshake failed, code=6`, `decryption failed with code N`, orange burst.",
        "The device received the session key but could not decrypt it with its private key: the cloud encrypted "
        "it to a public key that does not match.",
        (
            Cause(
                "corrupt_private_key",
                "The device's private key is corrupt but not blank",
                "high",
                "If the damage spared the modulus, the public key the device rebuilds still matches the cloud, "
                "which therefore accepts it; the damaged private numbers then fail to decrypt. The firmware never "
                "replaces a key that is not blank.",
                _KEYS_DOCTOR,
            ),
            Cause(
                "no_key_check",
                "The cloud does not compare the presented key with the stored one",
                "medium",
                "Old local servers (spark-server) encrypt to the stored key whatever the device presents; a device "
                "that regenerated its key then fails here instead of at C5.",
                "Register the device's current public key, or use a cloud that checks keys (Cyan does).",
            ),
        ),
        "On a cloud that compares keys (Cyan), this is the only way to an orange burst, and it points at an "
        "internally corrupt private key.",
        "Cyan records `session_key_rejected`: the key matched, the session key went out, and the device closed "
        "without a Hello.",
        "Give the device a sound key pair (keys doctor or a backup) and register its public key.",
    ),
    Entry(
        "C7",
        "Server signature not verified (S6): fast cyan, 1 magenta blink, AUTHENTICATION_ERROR (8)",
        "S6",
        "`signature validation failed`, `Could not set key, 8`, `Handshake failed: 8`, 2.x `code=-130`, magenta burst.",
        "The device decrypted the session key but the server's signature over it did not verify with the server "
        "public key the device holds.",
        (
            Cause(
                "server_signing_key",
                "The server signs with a private key that does not match the key file on the device",
                "high",
                "A self-hosted cloud started with another key file than the one written to the devices.",
                "Run the server with the private key whose public half the devices hold, or write the current key "
                "file to the devices.",
            ),
            Cause(
                "damaged_server_key",
                "The server public key on the device is damaged in a way that only breaks verification",
                "low",
                "Rare in the field.",
                _DFU_SERVER_KEY,
            ),
        ),
        "Several devices failing this way at the same time means the server's key changed.",
        "Cyan cannot tell this from C6 on its side (`session_key_rejected`); the device log says which.",
        "Make the server's private key match the server public key on the devices.",
    ),
    Entry(
        "C8",
        "No Hello from the cloud (S7/S8): fast cyan, `Could not receive HELLO response`",
        "S8",
        "`Could not receive HELLO response` then `code=-1` (legacy TCP), `Handshake: could not receive HELLO "
        "response 10` (UDP), `Sending HELLO message` over and over.",
        "The handshake completed but the first encrypted exchange did not: the server's Hello never came back in time.",
        (
            Cause(
                "slow_hello",
                "The server answered the Hello too late",
                "high",
                "Legacy firmware (0.6.x) waits only about 2 s for the server's Hello.",
                "Answer the device Hello at once; check the server's load and database latency.",
            ),
            Cause(
                "lost_session",
                "The server lost the session while the device resumes it",
                "high",
                "On UDP devices, a server that lost its session store never answers the resumed session "
                "(Particle's own incident: hundreds of sleepy devices stuck).",
                "Make the server answer unknown sessions so the device does a full handshake.",
            ),
            Cause(
                "keys_changed_session_kept",
                "The device keys changed while a saved session survived",
                "medium",
                "The device keeps resuming a session made with its old keys.",
                "Clear the saved session (full handshake) after a key change.",
            ),
            Cause(
                "poor_link",
                "Very poor connectivity",
                "low",
                "Packets lost after the handshake.",
                "Improve the signal.",
            ),
        ),
        "UDP devices loop on session resume; TCP devices hit the 2 s Hello deadline.",
        "Cyan records `hello_timeout` when the device Hello never came, or a connected attempt when it did.",
        "Have the server answer the Hello promptly, and force a full handshake when session state is missing.",
    ),
    Entry(
        "C9",
        "Corrupt server key on the device: `unable to parse negotiated pub key`, code 16",
        "dtls",
        "`unable to parse negotiated pub key: -3b62` → `setup_contex error 10` → `handshake failed with code 16` "
        "(Electron), or `RSA encrypt error` (TCP), one red blink.",
        "The server public key stored on the device is not a usable key, so the handshake cannot even start.",
        (
            Cause(
                "corrupt_server_key",
                "The server public key in the device's flash is corrupt",
                "high",
                "Firmware 0.7.0+ replaces a blank key by a built-in one, but never a corrupt one.",
                _DFU_SERVER_KEY,
            ),
        ),
        "Happens before any packet is sent: the server sees nothing.",
        "Nothing: the device fails before it sends anything.",
        "Write the server key again over DFU.",
    ),
    Entry(
        "C10",
        "DNS failure: `Cloud: unable to resolve IP for ...`",
        "S0",
        "`Cloud: unable to resolve IP for device.spark.io`; cloud-debug `failed to get ... from DNS, try N`, "
        "`device.spark.io=0.0.0.0`; 2 or 3 orange blinks.",
        "The device could not turn the server's name into an address.",
        (
            Cause(
                "resolver",
                "The DNS resolver is unreachable or filters the name",
                "high",
                "DHCP handed out a bad resolver, or the network blocks outside DNS.",
                "Fix the network's DNS, or give the device a static IP with a known resolver.",
            ),
            Cause(
                "static_dns",
                "A static IP configuration with a wrong DNS server",
                "medium",
                "Set with `WiFi.setStaticIP` / `useStaticIP`.",
                "Correct the DNS server in the static configuration.",
            ),
        ),
        "`dnsServerIP=0.0.0.0` in cloud-debug output is normal on Photon/P1 (the HAL never fills it in) and is not a "
        "symptom.",
        "Nothing arrives at the server.",
        "Repair DNS; for a self-hosted cloud on flaky DNS, use an IP-type server address in the key file.",
    ),
    Entry(
        "C11",
        "Server address blank or invalid: `Read Server Address = type:255`",
        "S0",
        "`Read Server Address = type:255,defaulting to device.spark.io`, `Public Server Address was blank, restoring.`",
        "The server address block in the device's flash was erased or damaged, so the device falls back to "
        "Particle's `device.spark.io`: for a self-hosted cloud the device now talks to Particle, not to you.",
        (
            Cause(
                "server_block_erased",
                "The DCT server block (address and key) was erased or corrupted",
                "high",
                "The address sits right after the server key; damage to one usually means damage to both (C5).",
                _DFU_SERVER_KEY,
            ),
        ),
        "Check the server key stored next to the address; expect C5 (wrong server key) with it.",
        "Your server sees nothing from the device: it is talking to Particle.",
        "Write your server's key file (key and address) to the device over DFU; consider application code that "
        "checks and rewrites the server block.",
    ),
    Entry(
        "C12",
        "Connected, then dropped",
        "session",
        "`Disconnecting cloud due to inactivity!`, `Communication loop error, closing cloud socket`, "
        "`bytes received error -N`; breathing cyan falls back to blinking.",
        "The session was established and later ended without a handshake problem.",
        (
            Cause(
                "idle_timeout",
                "A NAT or firewall dropped the idle connection",
                "high",
                "TCP devices give up when nothing arrives from the cloud for a while; home routers forget idle "
                "mappings.",
                "Keep the connection busy (the device pings after 15 s; shorten with Particle.keepAlive on newer "
                "firmware) and check the router's TCP idle timeout.",
            ),
            Cause(
                "rejected_message",
                "The server sent a message the firmware does not accept",
                "medium",
                "Legacy firmware closes the socket on an unexpected CoAP response code (`received ERROR CoAPMessage`).",
                "Fix the server to send only empty ACKs and the replies the device asked for (protocol.md §13).",
            ),
            Cause(
                "blocked_loop",
                "The application blocks the system loop",
                "medium",
                "In non-threaded mode a long `loop()` starves the cloud connection (breathing green).",
                "Return from loop() often, call Particle.process(), or enable system threading.",
            ),
            Cause(
                "link_lost",
                "Wi-Fi or power was lost",
                "low",
                "The socket errors with connection lost, reset or closed.",
                "Check signal and supply.",
            ),
        ),
        "A server that records many short sessions from one device sees the churn; the device log says who ended it.",
        "Cyan records a connected attempt per session; many of them in a short time mean the sessions keep dropping.",
        "Find what ends the session (idle timeout, server message, application) from the evidence.",
    ),
    Entry(
        "C13",
        "SOS (red panic blinks)",
        "session",
        "Red SOS, then N red blinks, then SOS; `PANIC` log lines; `spark/device/last_reset` = `panic, ...`.",
        "The firmware crashed; the blink count is the panic code (1 hard fault, 8 out of heap, 13 stack overflow, "
        "...).",
        (
            Cause(
                "application_bug",
                "A bug in the application (or a library)",
                "high",
                "Hard faults, stack overflows and assertion failures are usually the application's.",
                "Debug the application with the panic code; SOS 8 (out of heap) can come from repeated reconnect "
                "cycles.",
            ),
            Cause(
                "corrupt_image",
                "A damaged application image after a brown-out",
                "medium",
                "An SOS right at boot after a power event; safe mode still works.",
                "Flash the application again (safe mode still accepts updates).",
            ),
        ),
        "Red blinks seen while online come after an SOS pattern; they are not handshake bursts.",
        "The device reports the crash as `spark/device/last_reset` on its next connection.",
        "Act on the panic code; reflash the application if the image is damaged.",
    ),
    Entry(
        "C14",
        "Dim blue D7, no status LED: bootloader erased",
        "wifi",
        "Dim blue D7 LED, no status LED, buttons do nothing.",
        "The bootloader is gone (a brown-out during a flash write, or an update interrupted by a reset). The "
        "device cannot start anything.",
        (
            Cause(
                "bootloader_erased",
                "The bootloader flash sector was erased",
                "high",
                "A power event or an interrupted update.",
                "Reprogram the bootloader with a JTAG/SWD programmer; it cannot be done remotely.",
            ),
        ),
        "Only the LED tells; a device log ends where the device died (often in the middle of an update).",
        "The server simply stops hearing from the device.",
        "JTAG/SWD only; keep a programming header on custom boards.",
    ),
    Entry(
        "C15",
        "Safe mode (breathing magenta) after an update",
        "session",
        "Breathing magenta; `spark/status/safe-mode` event with the module list.",
        "The application does not run because a module it needs is missing or too old, usually after an update "
        "that did not bring every system part along.",
        (
            Cause(
                "missing_dependency",
                "Unmet module dependencies after an update",
                "high",
                "The safe-mode event lists the modules and the versions they need.",
                "Send the missing system parts, one at a time and in order, then the application.",
            ),
            Cause(
                "healer_stuck",
                "The safe-mode healer did not engage",
                "low",
                "The device stays in safe mode although the cloud could fix it.",
                "Push the missing parts by hand (OTA or USB).",
            ),
        ),
        "The safe-mode event's module list shows what is missing.",
        "The device connects (in safe mode) and publishes `spark/status/safe-mode`.",
        "Push the missing system modules in order, then the application.",
    ),
    Entry(
        "C16",
        "The device reports `spark/device/key/error` (0.7.0+)",
        "S9",
        "`Public Server Key was blank, restoring.`, `Public Server Address was blank, restoring.`, "
        "`Send event spark/device/key/error=N`.",
        "The server key or address in flash was blank, and the firmware is running on its built-in defaults from "
        "RAM. Those defaults are Particle's: a self-hosted cloud never gets this event, because the healed device "
        "connects to Particle.",
        (
            Cause(
                "server_block_blank",
                "The DCT server block was erased",
                "high",
                "Bit 1: the server key was blank; bit 4: the server address was blank (other bits are never set on "
                "Gen 2).",
                "Audit the device's keys and server block; write your server's key file over DFU. Never send "
                "`spark/device/key/restore` from a self-hosted cloud: it writes Particle's key and address.",
            ),
        ),
        "The flags say which part was blank.",
        "Only the cloud the device connected to sees the event; after self-healing that is Particle's.",
        "Schedule a key and configuration audit; rewrite the server block with your key and address.",
    ),
    Entry(
        "C17",
        "Power events in the history: `last_reset` = power_down / power_brownout",
        "wifi",
        "`spark/device/last_reset` = `power_down` or `power_brownout`; the `sys:reset` vital.",
        "The device lost power or browned out. That is harmless by itself, but it is how flash gets corrupted: it "
        "predicts lost credentials (C1), regenerated keys (C5) and an erased bootloader (C14).",
        (
            Cause(
                "power_supply",
                "An unstable supply or a flat battery",
                "high",
                "Running until the battery is empty, loose USB chargers, weak supplies.",
                "Check the state of charge at boot and sleep below 15–20 %; fix the supply; avoid needless flash "
                "writes (setting Wi-Fi credentials at every boot).",
            ),
        ),
        "Look for key trouble right after such a reset.",
        "The device reports it as `spark/device/last_reset` on its next connection.",
        "Improve power hygiene; keep key backups for devices with a history of brown-outs.",
    ),
)

_BY_ID = {e.id: e for e in CATALOG}


def entry(entry_id: str) -> Entry:
    """The catalog entry `C1`..`C17` (case-insensitive)."""
    try:
        return _BY_ID[entry_id.upper()]
    except KeyError:
        raise KeyError(f"no catalog entry {entry_id!r}; they are C1 to C{len(CATALOG)}") from None
