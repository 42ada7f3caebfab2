"""Device keys for fleets: generated in parallel, cached in a directory and reused on the next run.

RSA-1024 generation costs about 8 ms a key (more with the firmware-parser check, §A.3), so 10,000 devices
would spend over a minute on keys at every start: they are generated once, in parallel worker processes,
written one file per device with `write_private_key_file` (0600, never overwritten) and listed in an index file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import cyan
from cyan.keys import encode_private_key_pem, fingerprint, generate_device_key, write_private_key_file

from ._spec import derive_device_id

__all__ = ["INDEX_FILE", "generate_device_keys", "load_or_create_keys"]

#: The index of a key directory: seed, prefix, and for each device its id, key file and fingerprint.
INDEX_FILE = "fleet.json"
_FORMAT = "cyan-sim-keys/1"
#: Below this many keys, starting worker processes costs more than it saves.
_POOL_THRESHOLD = 64
_PEM_END = b"-----END RSA PRIVATE KEY-----\n"


def _load_own_pem(pem: bytes) -> rsa.RSAPrivateKey:
    # Keys this module generated itself (in a worker process, or earlier into a 0600 file it then checks by
    # fingerprint): OpenSSL's consistency check costs 5 ms a key, the whole start-up of a large fleet.
    key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the key file does not hold an RSA private key")
    return key


def generate_device_keys(count: int, *, workers: int | None = None) -> list[rsa.RSAPrivateKey]:
    """`count` new firmware-parsable device keys (`cyan.keys.generate_device_key`).

    `workers` None uses a process per core for large counts; 1 generates in this process.
    Generation holds the GIL, so only processes make it parallel (see `_keygen`).
    """
    if count <= 0:
        return []
    if workers is None:
        workers = 1 if count < _POOL_THRESHOLD else os.cpu_count() or 1
    if workers <= 1:
        return [generate_device_key() for _ in range(count)]
    workers = min(workers, count)
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    # The children must import this very `cyan`, wherever it was imported from.
    package_root = str(Path(cyan.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # Each child writes to its own unlinked 0600 file, so none stalls on a full pipe while another is read.
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(tempfile.TemporaryFile()) for _ in shares]
        children = [
            subprocess.Popen([sys.executable, "-m", "cyan.sim._keygen", str(share)], stdout=output, env=env)
            for share, output in zip(shares, outputs, strict=True)
        ]
        failed = [code for code in (child.wait() for child in children) if code != 0]
        pems: list[bytes] = []
        for output in outputs:
            output.seek(0)
            pems += [block + _PEM_END for block in output.read().split(_PEM_END) if block.strip()]
    if failed or len(pems) != count:
        raise RuntimeError(f"device key generation failed (exit codes {failed}, {len(pems)} of {count} keys)")
    return [_load_own_pem(pem) for pem in pems]


def _read_index(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("devices"), list):
        raise ValueError(f"{path} is not a cyan sim key index ({_FORMAT})")
    return data


def _write_index(path: Path, seed: str, prefix: str, entries: Sequence[dict[str, str]]) -> None:
    document = {"format": _FORMAT, "seed": seed, "prefix": prefix, "devices": list(entries)}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)


def load_or_create_keys(
    directory: str | os.PathLike[str],
    count: int,
    *,
    seed: str = "cyan-sim",
    prefix: str = "",
    workers: int | None = None,
) -> list[tuple[str, rsa.RSAPrivateKey]]:
    """The first `count` (device id, key) pairs of the key directory, creating what is missing.

    Ids come from `derive_device_id(index, seed=seed, prefix=prefix)`, so a directory made with one seed
    refuses another. Existing key files are reused (checked against the index's fingerprints) and never
    overwritten; new ones are written `<device id>.pem`, 0600.
    """
    if count < 0:
        raise ValueError("the device count cannot be negative")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / INDEX_FILE
    index = _read_index(index_path)
    entries: list[dict[str, str]] = []
    if index is not None:
        if index.get("seed") != seed or index.get("prefix", "") != prefix:
            raise ValueError(
                f"{root} holds keys for seed {index.get('seed')!r} prefix {index.get('prefix', '')!r}, "
                f"not seed {seed!r} prefix {prefix!r}; use another directory or the same seed"
            )
        devices = index["devices"]
        assert isinstance(devices, list)
        entries = [{str(k): str(v) for k, v in entry.items()} for entry in devices]

    result: list[tuple[str, rsa.RSAPrivateKey]] = []
    for position, entry in enumerate(entries[:count]):
        device_id = derive_device_id(position, seed=seed, prefix=prefix)
        if entry.get("device_id") != device_id:
            raise ValueError(f"{index_path} entry {position} is {entry.get('device_id')!r}, expected {device_id}")
        key = _load_own_pem((root / entry["key_file"]).read_bytes())
        if fingerprint(key) != entry.get("fingerprint"):
            raise ValueError(f"{root / entry['key_file']} does not match the fingerprint in {index_path}")
        result.append((device_id, key))

    missing = range(len(entries), count)
    if not missing:
        return result
    # A key file without an index entry (an interrupted run) is taken as it is, never replaced.
    fresh = iter(
        generate_device_keys(sum(1 for i in missing if not _key_path(root, seed, prefix, i).exists()), workers=workers)
    )
    for position in missing:
        device_id = derive_device_id(position, seed=seed, prefix=prefix)
        path = _key_path(root, seed, prefix, position)
        if path.exists():
            key = _load_own_pem(path.read_bytes())
        else:
            key = next(fresh)
            write_private_key_file(path, encode_private_key_pem(key))
        entries.append({"device_id": device_id, "key_file": path.name, "fingerprint": fingerprint(key)})
        result.append((device_id, key))
    _write_index(index_path, seed, prefix, entries)
    return result


def _key_path(root: Path, seed: str, prefix: str, position: int) -> Path:
    return root / f"{derive_device_id(position, seed=seed, prefix=prefix)}.pem"
