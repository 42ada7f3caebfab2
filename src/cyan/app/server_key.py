"""The server's own key: which one the devices were given, and when it may change.

Every device holds the server's public key (protocol.md §11); a server that starts with another key locks
all of them out at once, with nothing on the device but a failed handshake. So the key in use is recorded in
the audit trail, a server whose key file went missing does not quietly make a new one, and replacing the key
is a deliberate, audited act (`cyan serve --new-server-key`).

The nodes of a cloud of several share the database, so the first node's key is recorded for all of them: each
node is given that key file, and a node started with another refuses to start and says which one it needs.

The UDP devices (Electron, Gen 3) hold the P-256 server key's public half the same way (udp-dtls.md §1.2), so
it is recorded and checked by the same rules, under its own subject (`UDP_SERVER_KEY`).
"""

from __future__ import annotations

from cyan.cloud.errors import CloudError
from cyan.cloud.models import AuditEntry

from ._context import AppContext
from .actors import Actor

__all__ = ["SERVER_KEY", "UDP_SERVER_KEY", "ServerKeyChangedError", "ServerKeyMissingError", "ServerKeyUseCases"]

#: The audit trail's subject for entries about the server key (RSA, the TCP devices').
SERVER_KEY = "server_key"
#: ... and about the UDP devices' P-256 server key.
UDP_SERVER_KEY = "udp_server_key"

#: Per subject: what the messages call the key, its file's name, and how the devices' handshakes fail with
#: another one.
_KINDS = {
    SERVER_KEY: ("server key", "server_key.pem", "their handshakes would fail with nonce_mismatch"),
    UDP_SERVER_KEY: (
        "UDP server key",
        "udp_server_key.pem",
        "their DTLS handshakes would fail with bad_signature",
    ),
}


class ServerKeyMissingError(CloudError):
    def __init__(
        self, path: str, expected: str | None, devices: int, *, shared: bool = False, subject: str = SERVER_KEY
    ) -> None:
        name, file_name, failure = _KINDS[subject]
        known = f"the devices expect the {name} {expected}" if expected else f"{devices} device(s) are registered"
        if shared and expected:
            known = f"the cloud this node joins (its shared database) uses the {name} {expected}"
        super().__init__(
            f"the {name} {path} is missing, and {known}: a new key would lock every device out ({failure})"
        )
        replace = (
            "; or, to give every device a new key file over DFU, start once with --new-server-key"
            if subject == SERVER_KEY
            else ""
        )
        self.hint = (
            f"copy {file_name} from another node of this cloud to {path} (owner-only): every node presents the same key"
            if shared and expected
            else f"restore {path} from a backup (its fingerprint must be {expected}){replace}"
            if expected
            else f"restore {path} from a backup, or start once with --new-server-key to make a new one"
        )


class ServerKeyChangedError(CloudError):
    def __init__(
        self, path: str, expected: str, found: str, *, shared: bool = False, subject: str = SERVER_KEY
    ) -> None:
        name, file_name, _ = _KINDS[subject]
        given = "the cloud's other nodes (its shared database) use" if shared else "the devices were given"
        super().__init__(
            f"the {name} {path} is {found}, but {given} {expected}: with it, every device's handshake would fail"
        )
        self.hint = (
            f"copy {file_name} from another node of this cloud to {path}: every node presents the same key"
            if shared
            else f"put back the key with the fingerprint {expected}; or, if the change is deliberate, start once "
            "with --new-server-key (the devices then need the new key file over DFU)"
            if subject == SERVER_KEY
            else f"put back the key with the fingerprint {expected} (every UDP device holds its public half)"
        )


class ServerKeyUseCases:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def expected(self, subject: str = SERVER_KEY) -> str | None:
        """The fingerprint of the server key devices were last given (`subject`: `SERVER_KEY`, RSA, or
        `UDP_SERVER_KEY`), as the audit trail records it."""
        entries = await self._ctx.store.audit.recent(subject=subject, limit=1)
        return entries[0].new_fingerprint if entries else None

    async def check(self, path: str, found: str | None, *, shared: bool = False, subject: str = SERVER_KEY) -> None:
        """Before a server starts with the key file it found (its fingerprint), or none: raise when that
        would lock registered devices out; record the key in use the first time. `shared`: the database is a
        cloud's of several nodes, which the messages say. For the UDP key, a missing file is refused only once
        a key is recorded: a data directory from before there were UDP devices has none to lose."""
        expected = await self.expected(subject)
        if found is None:
            devices = len(await self._ctx.store.devices.all()) if subject == SERVER_KEY else 0
            if expected is not None or devices:
                raise ServerKeyMissingError(path, expected, devices, shared=shared, subject=subject)
            return
        if expected is None:
            await self._record(
                f"{subject}_in_use",
                Actor.system("server"),
                None,
                found,
                "recorded at start-up",
                path=path,
                shared=shared,
                subject=subject,
            )
        elif expected != found:
            raise ServerKeyChangedError(path, expected, found, shared=shared, subject=subject)

    async def created(
        self, actor: Actor, fingerprint: str, *, path: str = "", shared: bool = False, subject: str = SERVER_KEY
    ) -> None:
        """A new key, recorded unless another node of the cloud recorded its own first (raises then)."""
        await self._record(
            f"{subject}_created",
            actor,
            None,
            fingerprint,
            "a new data directory",
            path=path,
            shared=shared,
            subject=subject,
        )

    async def replaced(self, actor: Actor, old: str | None, new: str, kept_as: str | None) -> None:
        detail = f"the old key file is kept as {kept_as}" if kept_as else "there was no key file to keep"
        await self._record("server_key_replaced", actor, old, new, detail)

    async def _record(
        self,
        action: str,
        actor: Actor,
        old: str | None,
        new: str,
        detail: str,
        *,
        path: str | None = None,
        shared: bool = False,
        subject: str = SERVER_KEY,
    ) -> None:
        """`path` given: the first record of a key, which must still be the first in its transaction (nodes
        starting together on an empty database: one key wins, the others refuse to start)."""
        entry = AuditEntry(self._ctx.clock(), None, action, actor.name, old, new, detail, subject)
        async with self._ctx.store.transaction() as tx:
            if path is not None:
                recorded = await tx.audit.recent(subject=subject, limit=1)
                if recorded and recorded[0].new_fingerprint != new:
                    raise ServerKeyChangedError(
                        path, recorded[0].new_fingerprint or "", new, shared=shared, subject=subject
                    )
                if recorded:
                    return
            await tx.audit.add(entry)
