"""Who is asking: an account (by its role), the operator at the server's command line, or the cloud itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cyan.cloud.models import DeviceRecord, Role

__all__ = ["Actor", "ActorKind"]


class ActorKind(enum.StrEnum):
    #: An account, through the API (its token) or named by the operator.
    ACCOUNT = "account"
    #: Whoever runs `cyan` on the server's own data: they hold the database and the keys already, so they
    #: may do what an admin may.
    OPERATOR = "operator"
    #: The cloud itself acting on a rule (the key policy) or on what a device proved.
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller of a use case. `name` is what the audit trail records."""

    name: str
    kind: ActorKind
    role: Role | None = None

    @classmethod
    def account(cls, username: str, role: Role) -> Actor:
        return cls(username.lower(), ActorKind.ACCOUNT, Role(role))

    @classmethod
    def operator(cls, name: str = "operator") -> Actor:
        return cls(name, ActorKind.OPERATOR, Role.ADMIN)

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(name, ActorKind.SYSTEM)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def username(self) -> str | None:
        """The account acting, if an account acts."""
        return self.name if self.kind is ActorKind.ACCOUNT else None

    def sees(self, device: DeviceRecord) -> bool:
        """Whether this actor may see and act on the device: its owner, or an admin."""
        return self.is_admin or (device.owner is not None and device.owner == self.username)
