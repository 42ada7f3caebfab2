"""The shapes of what the API answers and what it reads, for the OpenAPI document (`/openapi.json`).

Every response model is the JSON a route writes, key for key and in the same order: Particle's clients read
these bodies, so a model never renames, adds or drops a key. An undeclared key is an error rather than
silently dropped (`extra="forbid"`). A key that is left out when it does not apply (never null) is an
`Omittable` field: the token is the one answer that has them (its route renders with
`response_model_exclude_none`), and errors, which the handlers in errors.py write, document theirs so.

Request bodies are read by `_requests.body` (JSON or form-encoded, as Particle accepts them, and multipart
for firmware); their models here only describe them (`request_body`), so documenting a body never changes how
it is parsed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from cyan.cloud.models import AttemptOutcome, JobState, KeyPolicyMode, Role

__all__ = [
    "BODY_ERRORS",
    "Account",
    "AccountChanged",
    "AccountInfo",
    "AccountRemoval",
    "Attempt",
    "AttemptBrief",
    "AttemptCounts",
    "AttemptList",
    "AuditRecord",
    "Candidate",
    "ClaimCodeIssued",
    "ClaimCodeRequest",
    "ClaimRequest",
    "Claimed",
    "CoreInfo",
    "Delivery",
    "DevelopmentMarked",
    "Device",
    "DeviceChange",
    "DeviceDetail",
    "DevicePolicyRequest",
    "DevicePolicySet",
    "DoctorDevice",
    "DoctorReport",
    "Error",
    "EventPublish",
    "EventStream",
    "FailureLoop",
    "Finding",
    "FingerprintChoice",
    "Firmware",
    "FirmwareFile",
    "FirmwareUploaded",
    "FlashRequest",
    "Flashed",
    "FleetAlert",
    "FleetDevice",
    "FleetPage",
    "FleetPolicyRequest",
    "FleetSummary",
    "FunctionCall",
    "FunctionResult",
    "Integration",
    "IntegrationChanged",
    "IntegrationDetail",
    "IntegrationRequest",
    "IntegrationTestRequest",
    "IntegrationTested",
    "Job",
    "JobControlled",
    "KeyApproved",
    "KeyProvision",
    "KeyRejected",
    "KeyStatus",
    "LastVitals",
    "Mfa",
    "NewAccount",
    "NoParameters",
    "NothingChanged",
    "Ok",
    "PasswordChange",
    "PasswordChanged",
    "PendingKey",
    "Policies",
    "Policy",
    "PolicyChanged",
    "PolicyCleared",
    "ProductDevices",
    "ProductMeta",
    "Provisioned",
    "RekeyClosed",
    "RekeyRequest",
    "RekeyWindow",
    "RekeyWindowOf",
    "Rekeyed",
    "Renamed",
    "RoleChange",
    "Rollout",
    "RolloutControlled",
    "ServerKey",
    "Signaled",
    "SkippedJob",
    "StreamedEvent",
    "TestAnswer",
    "TimeWindow",
    "Token",
    "TokenCreated",
    "TokenGrant",
    "TokenInfo",
    "TokenRequest",
    "UnidentifiedGroup",
    "UnidentifiedList",
    "UnprovenAttempts",
    "UpdateRequest",
    "UserProfile",
    "VariableValue",
    "VitalsHistory",
    "VitalsRecord",
    "errors",
    "request_body",
    "stream_responses",
]

T = TypeVar("T")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


#: A key that is left out of the JSON when it does not apply: never null, so the schema says only its type.
Omittable = Annotated[T | SkipJsonSchema[None], Field(json_schema_extra=_no_default)]
#: A moment as the API writes it: ISO 8601 in UTC, to the millisecond ("2026-11-25T12:00:00.000Z").
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Shape(BaseModel):
    """A JSON object exactly as the API writes it. Where a shape is `{"ok": true, ...}` and another's keys, it
    derives from both, `Ok` last: pydantic lays out the fields of the last base first."""

    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------------------------


class Error(Shape):
    """Every error, in Particle's shape."""

    ok: Literal[False]
    error: str = Field(description="What went wrong, in a word or a few (`invalid_request`, `Not Found`, ...)")
    error_description: str = Field(description="What went wrong, in a sentence for people")
    field: Omittable[str] = Field(default=None, description="The request's field at fault (400)")
    info: Omittable[str] = Field(default=None, description="More for people: how to find the device (404), why (400)")
    reason: Omittable[str] = Field(default=None, description="Why a firmware binary is refused, machine-readable (400)")
    fingerprint: Omittable[str] = Field(default=None, description="The key named, which is not pending (409)")
    pending_fingerprints: Omittable[list[str]] = Field(default=None, description="The device's pending keys now (409)")


_ERRORS: dict[int, str] = {
    400: "Bad parameters (`field` names the one at fault), a refused function call or firmware binary, wrong "
    "credentials at login",
    401: "No access token, or an invalid, expired or revoked one",
    403: "An admin's act asked by a user, or a device connected in quarantine",
    404: "No such thing of yours: a device of another account is not told apart from one that does not exist; "
    "also a device not connected, or a function or variable it does not expose",
    408: "The device did not answer in time",
    409: "The state is in the way or changed meanwhile: a name in use, a pending key other than the one named "
    "(`pending_fingerprints`), a device being updated",
    413: "The request body is over its limit",
    415: "The body is neither JSON nor form-encoded (nor multipart, where a binary is taken)",
    429: "Too many failed logins: try again after Retry-After seconds",
    503: "The database or the bus is unavailable",
}

#: What a route that reads a body may answer for the body alone: unreadable (400), too large, of another type.
#: Every POST, PUT and DELETE route reads its body when the token is not in the header or query (it may be a
#: form field), so every one of them may answer these.
BODY_ERRORS = (400, 413, 415)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these error statuses, and 503 (any route reads storage)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 503}):
        response: dict[str, Any] = {"model": Error, "description": _ERRORS[status]}
        if status == 429:
            response["headers"] = {
                "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
            }
        documented[status] = response
    return documented


# -- request bodies -------------------------------------------------------------------------------------


def request_body(
    model: type[BaseModel] | None = None,
    *,
    multipart: type[BaseModel] | None = None,
    forms: bool = True,
    required: bool = False,
) -> dict[str, Any]:
    """`openapi_extra` documenting a body the route parses itself: `model` as JSON and, with `forms`, as a
    form (the Particle CLI sends forms); `multipart` for a binary upload."""
    content: dict[str, Any] = {}
    if model is not None:
        schema = model.model_json_schema()
        # Inlined where it is used: a flat model has no definitions to refer to.
        assert "$defs" not in schema, f"{model.__name__} must be flat to be inlined"
        content["application/json"] = {"schema": schema}
        if forms:
            content["application/x-www-form-urlencoded"] = {"schema": schema}
    if multipart is not None:
        schema = multipart.model_json_schema()
        assert "$defs" not in schema, f"{multipart.__name__} must be flat to be inlined"
        content["multipart/form-data"] = {"schema": schema}
    return {"requestBody": {"required": required, "content": content}}


class TokenRequest(BaseModel):
    grant_type: Literal["password", "refresh_token"]
    username: Omittable[str] = Field(default=None, description="The password grant's account")
    password: Omittable[str] = Field(default=None, description="The password grant's password")
    refresh_token: Omittable[str] = Field(
        default=None,
        description="The refresh grant's token, from an earlier answer; it is spent by its use, and sent again it "
        "revokes every token rotated from the same login",
    )
    client_id: Omittable[str] = Field(
        default=None, description="Any: CLI2 (particle login), user (particle token create)"
    )
    expires_in: Omittable[int] = Field(
        default=None, description="Seconds the token lasts (default 90 days, at most ten years); 0: it never expires"
    )


class PasswordChange(BaseModel):
    password: str = Field(description="The new password: 8 to 1024 characters")
    current_password: str


class AccountRemoval(BaseModel):
    password: str = Field(description="The account's password")


class NewAccount(BaseModel):
    username: str
    password: str
    role: Literal["admin", "user"] = "user"


class RoleChange(BaseModel):
    role: Literal["admin", "user"]


class DeviceChange(BaseModel):
    name: Omittable[str] = Field(
        default=None, description="A new name: 1 to 63 of A-Z a-z 0-9 _ -, unique among its owner's devices"
    )
    notes: Omittable[str] = Field(
        default=None, description='Notes about the device, up to 1,000 characters; "" clears them'
    )
    signal: Omittable[str] = Field(default=None, description='"1": the device shows a rainbow LED; "0": it stops')
    development: Omittable[bool] = Field(
        default=None, description="What particle flash sends for a product's device first; every device already is one"
    )


class FirmwareFile(BaseModel):
    file: bytes = Field(description="The binary")


class FlashRequest(FirmwareFile):
    latest: Omittable[str] = Field(default=None, description="Sent by the CLI; does not apply to a binary")
    queue: Omittable[bool] = Field(
        default=None, description="true: an offline device's update waits for its connection instead of a 404"
    )
    build_target_version: Omittable[str] = Field(
        default=None, description="Sent by the CLI; does not apply to a binary"
    )


class ClaimRequest(BaseModel):
    id: Omittable[str] = Field(default=None, description="The device's id")
    deviceID: Omittable[str] = Field(default=None, description="The same, as older clients name it")  # Particle's name
    claim_code: Omittable[str] = Field(
        default=None, description="A code issued for the device (POST /v1/device_claims)"
    )
    owner: Omittable[str] = Field(default=None, description="Admins: the account to claim it for")


class ClaimCodeRequest(BaseModel):
    device_id: Omittable[str] = Field(default=None, description="Admins: the ownerless device the code is for")


class FunctionCall(BaseModel):
    arg: Omittable[str] = Field(default=None, description="The argument (at most 622 bytes), as the CLI sends it")
    args: Omittable[str] = Field(default=None, description="The same, as particle-api-js names it")


class KeyProvision(BaseModel):
    publicKey: str = Field(description="The device's public key, PEM: RSA-1024 (algorithm rsa) or EC P-256 (ecc)")
    algorithm: Literal["rsa", "ecc"] = "rsa"
    product_id: Omittable[int] = None
    claim_code: Omittable[str] = Field(
        default=None, description="A code issued for the device: provisions an ownerless one"
    )


class EventPublish(BaseModel):
    name: str = Field(description="1 to 64 bytes, no control character")
    data: Omittable[str] = Field(default=None, description="At most 622 bytes")
    private: bool = True
    ttl: int = Field(60, description="Seconds, 0 to 16777215")


class FingerprintChoice(BaseModel):
    fingerprint: str = Field(description="The pending key's fingerprint, as GET /v1/devices/:id/keys shows it")


class RekeyRequest(BaseModel):
    seconds: float = Field(3600, description="How long the window stays open: 1 s to 30 days")


class DevicePolicyRequest(BaseModel):
    mode: Literal["strict", "quarantine"]


class FleetPolicyRequest(BaseModel):
    mode: Omittable[Literal["strict", "quarantine"]] = None
    trust_on_first_use: Omittable[bool] = None
    self_registration: Omittable[bool] = None


class UpdateRequest(BaseModel):
    """Which devices: `devices`, `all` or `group`."""

    firmware: str = Field(description="The SHA-256 of a binary uploaded with POST /v1/firmware")
    devices: Omittable[list[str]] = Field(default=None, description="Ids or names of your devices")
    all: Omittable[bool] = Field(default=None, description="true: all of your devices")
    group: Omittable[str] = Field(default=None, description="Your devices in this group")
    mode: Literal["auto", "fast", "non_fast"] = "auto"
    concurrency: Omittable[int] = Field(default=None, description="Transfers at once")
    max_attempts: Omittable[int] = None


# -- accounts -------------------------------------------------------------------------------------------


class Ok(Shape):
    ok: Literal[True]


class Token(Shape):
    token_type: Literal["bearer"]
    access_token: str
    expires_in: Omittable[int] = Field(default=None, description="Left out for a token that never expires")
    expires_at: Omittable[Time] = Field(default=None, description="Left out for a token that never expires")
    refresh_token: Omittable[str] = Field(
        default=None,
        description="Exchanged once (grant_type=refresh_token) for new tokens within 30 days; revoked with a "
        "password change, and with every token rotated from the same login when a spent one is sent again",
    )


class PasswordChanged(Ok):
    message: str
    tokens_revoked: int = Field(description="The account's other tokens, revoked")


class AccountInfo(Shape):
    first_name: str
    last_name: str
    company_name: str
    business_account: bool


class Mfa(Shape):
    enabled: bool


class UserProfile(Shape):
    username: str
    role: Role | None
    subscription_ids: list[int]
    account_info: AccountInfo
    team_invites: list[dict[str, Any]]
    wifi_device_count: int
    cellular_device_count: int
    scim_provisioned: bool
    no_password: bool
    mfa: Mfa


class Account(Shape):
    username: str
    role: Role
    created_at: Time


class AccountChanged(Account, Ok):
    pass


# -- devices --------------------------------------------------------------------------------------------


class Device(Shape):
    id: str
    name: str | None
    last_app: str | None = Field(description="Not tracked here: always null")
    last_ip_address: str | None
    last_heard: Time | None
    last_handshake_at: Time | None = Field(description="When its current or last session's handshake completed")
    product_id: int | None
    online: bool
    connected: bool
    platform_id: int | None
    cellular: bool
    notes: str | None = Field(description="The owner's notes about the device (PUT with notes)")
    status: Literal["normal", "quarantined"]
    serial_number: str | None = Field(description="Not tracked here: always null")
    system_firmware_version: str | None = Field(
        description="The Device OS release it reported (Hello, or its system Describe on 0.6 and 0.7); null until "
        "it reports one, or for a system module version without a release name"
    )
    current_build_target: str | None = Field(description="Not tracked here: always null")
    pinned_build_target: str | None = Field(description="Not tracked here: always null")
    default_build_target: str | None = Field(description="Not tracked here: always null")
    firmware_updates_enabled: bool
    firmware_updates_forced: bool
    owner: str | None


class DeviceDetail(Device):
    functions: list[str]
    variables: dict[str, str] = Field(description="Name to type: int32, double, string or bool")
    key_fingerprint: str | None


class ProductMeta(Shape):
    total_pages: int


class ProductDevices(Shape):
    devices: list[Device]
    meta: ProductMeta


class Renamed(Shape):
    id: str
    name: str | None
    updated_at: Time


class NotesChanged(Shape):
    id: str
    name: str | None
    notes: str | None
    updated_at: Time


class Signaled(Shape):
    id: str
    connected: bool
    signaling: bool


class DevelopmentMarked(Ok):
    id: str
    development: Literal[True] = Field(description="Cyan pushes no product firmware: every device is one")


class Flashed(Ok):
    id: str
    status: str = Field(description="Update started, or queued until the device connects (the CLI requires it)")
    job: int = Field(description="The update job: GET /v1/updates/:job")
    firmware: str = Field(description="The binary's SHA-256")


class Claimed(Ok):
    user_id: str | None
    id: str
    connected: bool


class ClaimCodeIssued(Shape):
    claim_code: str
    device_ids: list[str]
    expires_in: int


class FunctionResult(Shape):
    id: str
    name: str | None
    connected: bool
    return_value: int


class CoreInfo(Shape):
    last_app: str
    last_heard: Time | None
    connected: bool
    last_handshake_at: Time | None
    deviceID: str  # Particle's name
    product_id: int | None


class VariableValue(Shape):
    cmd: Literal["VarReturn"]
    name: str
    result: bool | int | float | str
    coreInfo: CoreInfo  # Particle's name


class Provisioned(Ok):
    id: str
    key_fingerprint: str | None
    created: bool = Field(description="The device was registered now")


# -- keys -----------------------------------------------------------------------------------------------


class Policy(Shape):
    scope: str = Field(description='"*" for the fleet, or a device id')
    mode: KeyPolicyMode
    trust_on_first_use: bool
    self_registration: bool
    updated_by: str
    updated_at: Time | None


class PolicyChanged(Policy, Ok):
    pass


class Policies(Shape):
    fleet: Policy
    devices: list[Policy]


class PendingKey(Shape):
    device_id: str
    fingerprint: str
    registered_fingerprint: str | None
    first_seen: Time
    last_seen: Time
    attempts: int
    peer_address: str | None


class AuditRecord(Shape):
    at: Time
    device_id: str | None
    action: str
    actor: str
    subject: str | None
    old_fingerprint: str | None
    new_fingerprint: str | None
    detail: str | None


class RekeyWindow(Shape):
    until: Time
    armed_by: str
    armed_at: Time
    accepted_fingerprint: str | None
    accepted_at: Time | None


class UnprovenAttempts(Shape):
    period_hours: int
    count: int
    first: Time | None
    last: Time | None
    keys: dict[str, int] = Field(description="Presented key fingerprint to attempts")
    addresses: list[str]


class KeyStatus(Shape):
    id: str
    key_fingerprint: str | None
    connected: bool
    quarantined: bool
    policy: Policy
    pending_keys: list[PendingKey]
    rekey_window: RekeyWindow | None
    unproven_attempts: UnprovenAttempts
    audit: list[AuditRecord]


class KeyApproved(Ok):
    id: str
    key_fingerprint: str | None


class KeyRejected(Ok):
    id: str
    fingerprint: str


class Rekeyed(Ok):
    id: str
    until: Time


class RekeyClosed(Ok):
    closed: bool


class DevicePolicySet(Ok):
    id: str
    mode: KeyPolicyMode


class PolicyCleared(Ok):
    removed: bool


# -- diagnostics ----------------------------------------------------------------------------------------


class Attempt(Shape):
    id: int | None
    started_at: Time
    peer_address: str
    host: str
    device_id: str | None
    outcome: AttemptOutcome
    step: str
    reason: str | None
    detail: str | None
    presented_fingerprint: str | None
    stored_fingerprint: str | None
    duration: float | None
    said: str
    entry: str | None
    cause: str | None
    fix: str | None


class AttemptList(Shape):
    device_id: str
    attempts: list[Attempt]


class Candidate(Shape):
    device_id: str
    name: str | None
    last_address: str | None
    last_heard: Time | None
    online: bool
    relation: str
    likelihood: Literal["likely", "possible", "unlikely"]


class UnidentifiedGroup(Shape):
    host: str
    first: Time
    last: Time
    count: int
    reasons: dict[str, int]
    entry: str | None
    cause: str | None
    said: str
    loop: bool
    candidates: list[Candidate]


class UnidentifiedList(Shape):
    groups: list[UnidentifiedGroup]


class FailureLoop(Shape):
    device_id: str | None
    host: str | None
    reason: str
    count: int
    first: Time
    last: Time
    median_interval: float | None
    backoff_like: bool
    ongoing: bool
    entry: str | None
    cause: str | None


class Finding(Shape):
    entry: str | None
    title: str | None
    cause: str | None
    cause_title: str | None
    confidence: str
    said: str
    fix: str
    evidence: list[str]
    related: list[str]


class DoctorDevice(Shape):
    id: str
    registered: bool
    name: str | None
    online: bool
    last_heard: Time | None
    last_address: str | None
    key_fingerprint: str | None


class TimeWindow(Shape):
    since: Time | None
    until: Time | None


class AttemptCounts(Shape):
    attempts: int
    connected: int
    failed: int
    by_reason: dict[str, int]


class DoctorReport(Shape):
    # `schema` is a BaseModel attribute: the key is spelled by its alias.
    schema_: str = Field(alias="schema", description="cyan.doctor/1")
    device: DoctorDevice
    window: TimeWindow
    status: str
    counts: AttemptCounts
    last_connected: Time | None
    last_failure: Time | None
    said: list[str]
    diagnosis: list[Finding]
    todo: list[str]
    loops: list[FailureLoop]
    unidentified: list[UnidentifiedGroup]
    attempts: list[Attempt]


# -- updates --------------------------------------------------------------------------------------------


class Job(Shape):
    id: int
    device_id: str
    firmware: str
    rollout: str | None
    state: JobState
    mode: str
    attempts: int
    max_attempts: int
    bytes_sent: int
    total_bytes: int
    progress: float
    reason: str | None
    detail: str | None
    verification: str | None
    transfer_seconds: float | None
    created_by: str | None
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    updated_at: Time | None


class Rollout(Ok):
    rollout: str | None
    jobs: list[Job]
    skipped: list[str]


class Firmware(Shape):
    sha256: str
    size: int
    platform_id: int
    platform: str
    module_function: str
    module_index: int
    module_version: int
    product_id: int | None
    product_version: int | None
    module_sha256: str
    filename: str
    uploaded_by: str | None
    uploaded_at: Time


class FirmwareUploaded(Firmware, Ok):
    pass


# -- event streams --------------------------------------------------------------------------------------


# -- the fleet (Cyan's own routes, what the console shows) -----------------------------------------------


class AttemptBrief(Shape):
    started_at: Time
    outcome: str
    step: str
    reason: str | None
    peer_address: str


class FleetDevice(Shape):
    id: str
    name: str | None
    owner: str | None
    status: str = Field(description="online, offline, failing (its newest attempt failed lately) or pending")
    online: bool
    platform_id: int | None
    product_id: int | None
    product_version: int | None
    system_version: int | None
    last_heard: Time | None
    last_ip_address: str | None
    key_fingerprint: str | None
    pending_keys: int
    last_attempt: AttemptBrief | None


class FleetAlert(Shape):
    kind: str
    device_id: str | None
    at: Time
    summary: str
    details: dict[str, Any]


class FleetSummary(Shape):
    at: Time
    devices: int
    online: int
    offline: int
    failing: int
    failing_window_minutes: int
    pending_devices: int
    pending_keys: int
    quarantined: int
    rekey_windows: int
    unidentified_failures: int | None = Field(description="Failed attempts that named no device (admins; else null)")
    failing_devices: list[FleetDevice]
    alerts: list[FleetAlert]


class FleetPage(Shape):
    total: int
    offset: int
    limit: int
    devices: list[FleetDevice]


class JobControlled(Job, Ok):
    """The job after the change."""


class NothingChanged(Shape):
    ok: Literal[False]


class SkippedJob(Shape):
    id: int
    why: str


class RolloutControlled(Ok):
    changed: list[Job]
    skipped: list[SkippedJob]


class TokenInfo(Shape):
    hash: str = Field(description="The token's SHA-256: the token itself is never kept")
    username: str
    client: str
    created_at: Time
    expires_at: Time | None


class TokenCreated(Ok):
    access_token: str = Field(description="Shown this once")
    hash: str
    username: str
    client: str
    created_at: Time
    expires_at: Time | None


class NoParameters(BaseModel):
    """A body with nothing but, where the Authorization header has none, the access token."""

    access_token: Omittable[str] = Field(default=None, description="When not in the Authorization header")


class TokenGrant(BaseModel):
    expires_in: Omittable[int] = Field(default=None, description="Seconds the token lasts (default 90 days); 0: never")


class RekeyWindowOf(Shape):
    device_id: str
    until: Time
    armed_by: str
    armed_at: Time
    accepted_fingerprint: str | None
    accepted_at: Time | None


class ServerKey(Shape):
    fingerprint: str | None
    key_file: str | None
    key_file_url: str | None


# -- webhooks and vitals (Particle's) -------------------------------------------------------------------


class IntegrationRequest(BaseModel):
    """A webhook as Particle's API and `particle webhook create` describe it; templates may use the event's
    variables ({{{PARTICLE_EVENT_NAME}}}, {{{PARTICLE_EVENT_VALUE}}}, ... docs/api.md "Webhooks")."""

    model_config = ConfigDict(populate_by_name=True)

    event: str = Field(description="The prefix of the event names that trigger it")
    url: str = Field(description="http or https; a template")
    requestType: Omittable[str] = Field(default=None, description="GET, POST, PUT, PATCH or DELETE (default POST)")
    name: Omittable[str] = None
    deviceID: Omittable[str] = Field(default=None, description="Only this device's events trigger it")
    json_body: Omittable[Any] = Field(default=None, alias="json", description="A JSON body template")
    form: Omittable[dict[str, Any]] = None
    query: Omittable[dict[str, Any]] = None
    body: Omittable[str] = None
    headers: Omittable[dict[str, Any]] = None
    auth: Omittable[dict[str, Any]] = Field(default=None, description="Basic authentication: username, password")
    noDefaults: Omittable[bool] = None
    rejectUnauthorized: Omittable[bool] = None
    mydevices: Omittable[bool] = None
    disabled: Omittable[bool] = None
    responseTemplate: Omittable[str] = None
    responseTopic: Omittable[str] = None
    errorResponseTopic: Omittable[str] = None


class IntegrationTestRequest(BaseModel):
    data: Omittable[str] = Field(default=None, description="The test event's data (default test-event)")
    device_id: Omittable[str] = Field(default=None, description="As if this device of yours published it")
    deviceID: Omittable[str] = Field(default=None, description="The same, as Particle names it")


class Integration(Shape):
    """A webhook as the API shows it; the keys it was not given are left out."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    integration_type: Literal["Webhook"]
    event: str
    url: str
    requestType: str
    created_at: Time
    updated_at: Time | None
    noDefaults: bool
    rejectUnauthorized: bool
    mydevices: bool
    disabled: bool
    name: Omittable[str] = None
    deviceID: Omittable[str] = None
    json_body: Omittable[Any] = Field(default=None, alias="json")
    form: Omittable[Any] = None
    query: Omittable[Any] = None
    body: Omittable[Any] = None
    headers: Omittable[Any] = None
    auth: Omittable[Any] = None
    responseTemplate: Omittable[Any] = None
    responseTopic: Omittable[Any] = None
    errorResponseTopic: Omittable[Any] = None


class IntegrationChanged(Integration, Ok):
    pass


class Delivery(Shape):
    time: Time
    event: str
    deviceID: str | None
    attempt: int
    outcome: str
    status: int | None
    duration_ms: float | None
    error: str | None


class IntegrationDetail(Integration):
    logs: list[Delivery] = Field(description="Its recent deliveries, newest first")
    errors: list[Delivery] = Field(description="Those of them that did not succeed")
    counters: dict[str, int] = Field(description="What this server counted since it started")


class TestAnswer(Shape):
    statusCode: int | None
    body: str
    duration_ms: float | None


class IntegrationTested(Ok):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    passed: bool = Field(alias="pass")
    data: TestAnswer
    error: Omittable[str] = None


class VitalsRecord(Shape):
    updated_at: Time
    deviceID: str
    payload: dict[str, Any]


class LastVitals(Shape):
    diagnostics: VitalsRecord


class VitalsHistory(Shape):
    diagnostics: list[VitalsRecord]


class EventStream(StreamingResponse):
    """Server-sent events: the media type the OpenAPI document gives the stream routes' 200."""

    media_type = "text/event-stream"


class StreamedEvent(Shape):
    """The data of one event of a stream."""

    data: str | None
    ttl: int
    published_at: Time
    coreid: str = Field(description='The device that published it, or "api" for an event published through the API')


#: One event of a stream, as Open API 3.2 describes server-sent events (and schemathesis reads a 3.1 `schema`).
_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "The event's name"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": StreamedEvent.model_json_schema(),
        },
    },
}


def stream_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an event stream route: the stream, and its errors, which are JSON (FastAPI would give
    a `model` the stream's media type)."""
    documented: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "Server-sent events, endlessly: a `:ok` comment first, then each event (its `data` a "
            "JSON object), and a `:` comment every few seconds to keep the connection alive",
            "content": {"text/event-stream": {"schema": _EVENT}},
        }
    }
    for status, response in errors(*statuses).items():
        model: type[BaseModel] = response.pop("model")
        response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        documented[status] = response
    return documented
