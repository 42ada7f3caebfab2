"""Worker for `generate_device_keys`: ``python -m cyan.sim._keygen COUNT`` writes COUNT new device keys
to stdout as concatenated PEM blocks.

Key generation holds the GIL, so parallel generation needs processes. Plain child interpreters are used
rather than `multiprocessing`, whose spawn method re-imports the caller's main module and fails in any
script without an ``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import sys

from cyan.keys import encode_private_key_pem, generate_device_key


def main(argv: list[str]) -> int:
    count = int(argv[0])
    out = sys.stdout.buffer
    for _ in range(count):
        out.write(encode_private_key_pem(generate_device_key()))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
