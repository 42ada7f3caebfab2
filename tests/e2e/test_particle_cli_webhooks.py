"""`particle webhook create | list | delete` (npm particle-cli 3.43.1) against `cyan serve`, and a hook's answer
coming back to `particle subscribe`, with a real HTTP receiver on loopback (tests/hook_support.py).

What the CLI sends and reads (cli:src/cmd/webhook.js, cli:src/lib/api-client.js 814-890 at v3.43.1;
particle_cli_contract.md "particle webhook"): `POST /v1/webhooks` with JSON `{event, url, deviceid,
requestType, ...the file's fields}`, success when the body has `ok` (it prints `id`); `GET /v1/webhooks`, a JSON
list whose `id`, `event`, `url`, `deviceID` and `created_at` it prints; `DELETE /v1/webhooks/:id`, done when the
body has `ok`, failed when it has `error`. `delete all` asks first, then lists and deletes one by one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from particle_cli_support import (
    BackgroundCommand,
    Completed,
    CyanServer,
    ParticleCli,
    background,
    event_lines,
    read_store,
    require_particle_cli,
    run_cyan,
    subscribe_header_done,
)

from cyan.cloud.models import Integration
from cyan.keys import encode_public_key_pem, generate_device_key
from hook_support import Receiver, receiver

OWNER, PASSWORD = "hooks@example.com", "a hook's own password"
OTHER, OTHER_PASSWORD = "else@example.com", "somebody else's"
DEVICE = "0a0b0c0d0e0f101112131415"
HOOK_ID = re.compile(r"Successfully created webhook with ID ([0-9a-f]{24})")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyanServer]:
    require_particle_cli()
    root = tmp_path_factory.mktemp("cyan-hooks")
    # The receiver is on loopback, which webhooks may reach only with the operator's leave.
    started = CyanServer.start(root / "data", root / "logs", env={"CYAN_HOOK_ALLOWED_NETWORKS": "127.0.0.0/8"})
    try:
        for email, password in ((OWNER, PASSWORD), (OTHER, OTHER_PASSWORD)):
            done = run_cyan("users", "add", email, "--password", password, "--data-dir", str(started.data_dir))
            assert done.returncode == 0, str(done)
        key = root / "kitchen.pem"
        key.write_bytes(encode_public_key_pem(generate_device_key().public_key()))
        added = run_cyan(
            "devices", "add", DEVICE, "--key", str(key), "--name", "kitchen", "--owner", OWNER,
            "--data-dir", str(started.data_dir),
        )  # fmt: skip
        assert added.returncode == 0, str(added)
    except BaseException:
        started.stop()
        raise
    yield started
    code = started.stop()
    assert code == 0, f"cyan serve exited {code} on SIGINT\n{started.describe()}"


def cli_for(server: CyanServer, home: Path, email: str, password: str) -> ParticleCli:
    cli = ParticleCli(require_particle_cli(), home, server.api_url)
    done = cli.run("login", "-u", email, "-p", password)
    assert "> Successfully completed login!" in done.stdout, str(done)
    return cli


@pytest.fixture(scope="module")
def owner(server: CyanServer, tmp_path_factory: pytest.TempPathFactory) -> ParticleCli:
    return cli_for(server, tmp_path_factory.mktemp("owner"), OWNER, PASSWORD)


@pytest.fixture(scope="module")
def other(server: CyanServer, tmp_path_factory: pytest.TempPathFactory) -> ParticleCli:
    return cli_for(server, tmp_path_factory.mktemp("other"), OTHER, OTHER_PASSWORD)


@pytest.fixture(scope="module")
def hooks_receiver() -> Iterator[Receiver]:
    with receiver(body=b'{"reply": "from the receiver"}') as found:
        yield found


def ok(done: Completed) -> Completed:
    assert done.returncode == 0, str(done)
    return done


def stored(server: CyanServer) -> list[Integration]:
    return read_store(server.data_dir, lambda store: store.integrations.all(OWNER))


def created_id(done: Completed) -> str:
    found = HOOK_ID.search(done.stdout)
    assert found, str(done)
    return found.group(1)


def listed(cli: ParticleCli) -> list[tuple[str, str, str, str | None]]:
    """What `particle webhook list` printed: (id, event, url, device) for each hook (cli:src/cmd/webhook.js
    115-145)."""
    done = ok(cli.run("webhook", "list"))
    count = re.search(r"Found (\d+) hooks registered", done.stdout)
    assert count, str(done)
    hooks = re.findall(
        r'\d+\.\) Hook ID ([0-9a-f]{24}) is watching for "([^"]*)"\n\s+and sending to: (\S+)\n'
        r"(?:\s+for device ([0-9a-f]{24})\n)?\s+created at (\S+)",
        done.stdout,
    )
    assert len(hooks) == int(count.group(1)), str(done)
    for *_, created_at in hooks:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created_at), created_at
    return [(hook_id, event, url, device or None) for hook_id, event, url, device, _ in hooks]


def test_create_list_and_delete_webhooks(
    server: CyanServer, owner: ParticleCli, other: ParticleCli, hooks_receiver: Receiver, tmp_path: Path
) -> None:
    url = f"{hooks_receiver.url}/in"
    first = created_id(ok(owner.run("webhook", "create", "temp", url)))
    second = created_id(ok(owner.run("webhook", "create", "door", url, "kitchen")))
    template = tmp_path / "hook.json"
    template.write_text(
        json.dumps(
            {
                "event": "humidity",
                "url": url,
                "requestType": "PUT",
                "json": {"h": "{{{PARTICLE_EVENT_VALUE}}}"},
                "headers": {"X-Source": "{{PARTICLE_DEVICE_ID}}"},
                "noDefaults": True,
                "_": "The following parameters are optional",
            }
        )
    )
    from_file = ok(owner.run("webhook", "create", str(template)))
    assert f"Using settings from the file {template}" in from_file.stdout, str(from_file)
    third = created_id(from_file)
    get = created_id(ok(owner.run("webhook", "GET", "pressure", url)))

    assert listed(owner) == [
        (first, "temp", url, None),
        (second, "door", url, DEVICE),
        (third, "humidity", url, None),
        (get, "pressure", url, None),
    ]
    by_id = {hook.id: hook for hook in stored(server)}
    assert (by_id[first].request_type, by_id[second].device_id, by_id[get].request_type) == ("POST", DEVICE, "GET")
    assert by_id[third].templates == {
        "json": {"h": "{{{PARTICLE_EVENT_VALUE}}}"},
        "headers": {"X-Source": "{{PARTICLE_DEVICE_ID}}"},
    }
    assert (by_id[third].request_type, by_id[third].no_defaults) == ("PUT", True)
    # Another account sees none of them, and cannot delete one.
    assert listed(other) == []
    refused = other.run("webhook", "delete", first)
    assert refused.returncode != 0, str(refused)
    assert "Error deleting webhook: Not Found" in refused.output, str(refused)
    # A device that is not the owner's is not found either.
    foreign = owner.run("webhook", "create", "temp", url, "not-a-device")
    assert foreign.returncode != 0, str(foreign)
    assert "Error creating webhook" in foreign.output, str(foreign)

    deleted = ok(owner.run("webhook", "delete", second))
    assert "Successfully deleted webhook!" in deleted.stdout, str(deleted)
    assert [hook_id for hook_id, *_ in listed(owner)] == [first, third, get]
    everything = ok(
        owner.run_answering(["webhook", "delete", "all"], {"Do you want to delete ALL your webhooks?": "y"})
    )
    assert "Found 3 hooks registered" in everything.stdout, str(everything)
    assert [line.split()[-1] for line in everything.stdout.splitlines() if line.startswith("deleting ")] == [
        first,
        third,
        get,
    ]
    assert listed(owner) == []
    assert stored(server) == []


def test_a_published_event_reaches_the_receiver_and_its_answer_the_subscriber(
    server: CyanServer, owner: ParticleCli, other: ParticleCli, hooks_receiver: Receiver
) -> None:
    hook = created_id(ok(owner.run("webhook", "create", "cli/", f"{hooks_receiver.url}/cli")))
    before = len(hooks_receiver.received())
    with background([]) as commands:
        answers: BackgroundCommand = owner.start("subscribe", "hook-response/cli", "--max", "1")
        commands.append(answers)
        answers.wait_for(subscribe_header_done(1))
        others: BackgroundCommand = other.start("subscribe", "hook-", "--max", "1")
        commands.append(others)
        others.wait_for(subscribe_header_done(1))
        published = ok(owner.run("publish", "cli/reading", "42"))
        assert published.lines == ["Published private event: cli/reading"], str(published)
        done = answers.wait(timeout=20)
        (event,) = event_lines(done.stdout)
        assert (event["name"], event["data"], event["coreid"]) == (
            "hook-response/cli/reading/0",
            '{"reply": "from the receiver"}',
            "particle-internal",
        )
        assert others.process.poll() is None, "another account's stream saw the hook's events"
    request = hooks_receiver.wait_for(before + 1)[before]
    assert (request.method, request.path) == ("POST", "/cli")
    assert request.form() == {
        "event": "cli/reading",
        "data": "42",
        "published_at": request.form()["published_at"],
        "coreid": "api",
    }
    ok(owner.run("webhook", "delete", hook))
