"""What the status LED says (protocol.md §9.5, field-failures.md §0.7, §2 C1–C15).

People describe the LED in their own words ("fast cyan with a red flash", "3 orange blinks",
"breathing purple", "SOS then 8 blinks"). `explain_led` reads such a description into one of the
patterns the firmware produces and says what it means, with the catalog entries it points at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .codes import decimal, sos_meaning

__all__ = ["LED_PATTERNS", "UNKNOWN", "LedPattern", "LedReading", "explain_led"]


@dataclass(frozen=True, slots=True)
class LedPattern:
    """A pattern the Gen 2 firmware shows. `key` is stable (it appears in the JSON output)."""

    key: str
    title: str
    meaning: str
    #: Catalog entries, likeliest first.
    entries: tuple[str, ...]
    #: The connection step (see `cyan.diagnose.sequence.DeviceStep`) the device is in or failed at.
    step: str | None = None


@dataclass(frozen=True, slots=True)
class LedReading:
    """A description matched to a pattern."""

    description: str
    pattern: LedPattern
    #: SOS blink count, or the number of blinks of a burst when the description gave one.
    count: int | None = None
    note: str | None = None


_PATTERNS = (
    LedPattern(
        "blinking_green",
        "Blinking green",
        "The device is trying to join Wi-Fi and has no IP address yet. If it never stops, the Wi-Fi credentials are "
        "wrong or lost, or the access point does not suit it (5 GHz only, enterprise, out of range).",
        ("C1",),
        "wifi",
    ),
    LedPattern(
        "blinking_blue",
        "Blinking dark blue (listening mode)",
        "The device has no Wi-Fi credentials and waits to be set up. On a unit that used to work, after a power "
        "problem, the configuration flash (DCT) was probably erased: the keys next to the credentials are suspect "
        "too.",
        ("C1", "C17"),
        "wifi",
    ),
    LedPattern(
        "blinking_cyan",
        "Blinking cyan",
        "Wi-Fi is up and the device is opening its TCP connection to the cloud (step S0: address, DNS, connect).",
        ("C3", "C2", "C10"),
        "S0",
    ),
    LedPattern(
        "fast_cyan",
        "Fast blinking cyan",
        "The connection is open and the handshake is running (S1–S8). Endless fast cyan with short bursts of "
        "another colour between tries is a handshake loop: the colour of the burst says which.",
        ("C5", "C4", "C8"),
        "S1",
    ),
    LedPattern(
        "cyan_red",
        "Fast cyan with a red burst",
        "The handshake failed without a specific error: most often the cloud closed the connection after the "
        "device sent its handshake (C5: a regenerated device key, a wrong server key on the device, or a device "
        "the cloud does not know), less often at the nonce (C4) or the Hello (C8). On Device OS 2.x and later "
        "every handshake failure shows red.",
        ("C5", "C4", "C8"),
        "S5",
    ),
    LedPattern(
        "cyan_orange",
        "Fast cyan with one orange burst",
        "DECRYPTION_ERROR: the device could not decrypt the session key, so the cloud encrypted it to a public key "
        "that does not belong to this device's private key (a corrupt private key, or a cloud that does not check "
        "keys).",
        ("C6",),
        "S6",
    ),
    LedPattern(
        "cyan_magenta",
        "Fast cyan with one magenta burst",
        "AUTHENTICATION_ERROR: the cloud's signature did not verify with the server public key the device holds. "
        "On a self-hosted cloud this is nearly always the server signing with the wrong private key.",
        ("C7",),
        "S6",
    ),
    LedPattern(
        "cyan_2_orange",
        "Blinking cyan, then 2 orange blinks",
        "The cloud socket could not be opened and the internet test failed too: no working internet on this "
        "network (or a network that blocks TCP to public DNS servers, which fools the test).",
        ("C2", "C10"),
        "S0",
    ),
    LedPattern(
        "cyan_3_orange",
        "Blinking cyan, then 3 orange blinks",
        "The internet works but the cloud could not be reached: port 5683 blocked, a server address pointing at a "
        "host that is down, stale DNS, or the cloud is down. Particle notes this can also come from bad server "
        "keys.",
        ("C3", "C10", "C11"),
        "S0",
    ),
    LedPattern(
        "breathing_cyan",
        "Breathing cyan",
        "Connected to the cloud. If it drops back to blinking now and then, see C12.",
        ("C12",),
        "session",
    ),
    LedPattern(
        "breathing_green",
        "Breathing green",
        "Wi-Fi is connected but the cloud is not: the application turned the cloud off, or a blocking "
        "application loop starves the cloud connection (non-threaded mode).",
        ("C12",),
        "session",
    ),
    LedPattern(
        "breathing_magenta",
        "Breathing magenta (safe mode)",
        "Safe mode: the application does not run because a module it depends on is missing or too old, "
        "typically after an update that did not bring every system part.",
        ("C15",),
        "session",
    ),
    LedPattern(
        "blinking_magenta",
        "Blinking magenta",
        "An update is being written (OTA or a USB flash). If it stays like this, or goes dark afterwards, the update "
        "was interrupted.",
        ("C15", "C14"),
        None,
    ),
    LedPattern(
        "blinking_white",
        "Blinking white at boot",
        "The device is generating a new key pair because its private key area was blank: it lost its key on this "
        "boot. The cloud still holds the old public key and will refuse the new one (C5, amnesia).",
        ("C5", "C17"),
        "wifi",
    ),
    LedPattern(
        "dim_blue_d7",
        "Dim blue D7, no status LED",
        "The bootloader is erased (a power event during a flash write, or an interrupted update). Only a JTAG/SWD "
        "programmer revives it; the server just stops hearing from it.",
        ("C14",),
        None,
    ),
    LedPattern(
        "sos",
        "Red SOS",
        "The firmware crashed (a panic); the number of red blinks between two SOS patterns is the panic code. Red "
        "blinks seen while online follow an SOS; they are not handshake bursts.",
        ("C13",),
        None,
    ),
    LedPattern(
        "blinking_red",
        "Blinking red",
        "Either a red SOS (count the blinks between two SOS patterns) or the red burst of a failed handshake "
        "between fast cyan tries.",
        ("C13", "C5"),
        None,
    ),
    LedPattern(
        "breathing_white",
        "Breathing white",
        "Wi-Fi is off (the application turned it off or the device sleeps): not a connection failure.",
        (),
        None,
    ),
)

#: A description read as none of the patterns: it points at nothing, and says which patterns there are.
UNKNOWN = LedPattern(
    "unknown",
    "Not a pattern this tool knows",
    "Describe the colour and how it lights: blinking, fast blinking or breathing, and any burst of another colour "
    'with its count ("fast cyan, 1 red blink", "breathing magenta", "SOS then 8 blinks"). The patterns: '
    + "; ".join(p.title for p in _PATTERNS)
    + ".",
    (),
    None,
)

LED_PATTERNS: dict[str, LedPattern] = {p.key: p for p in (*_PATTERNS, UNKNOWN)}

_SYNONYMS: tuple[tuple[str, str], ...] = (
    (r"\byellow\b|\bamber\b", "orange"),
    (r"\bpurple\b|\bpink\b|\bviolet\b", "magenta"),
    (r"\blight blue\b|\bteal\b|\bturquoise\b|\baqua\b", "cyan"),
    (r"\bdark blue\b|\bnavy\b", "blue"),
    (r"\bflash(es|ing|ed)?\b|\bblink(s|ing|ed)?\b|\bburst(s)?\b|\bflicker(s|ing)?\b", "blink"),
    (r"\bbreath(e|es|ing)\b|\bpuls(e|es|ing)\b|\bfad(e|es|ing)\b|\bglow(s|ing)?\b", "breathing"),
    (r"\bquick(ly)?\b|\brapid(ly)?\b|\bfast(er)?\b", "fast"),
    (r"\bonce\b|\bsingle\b|\bone\b|\ba\b|\ban\b", "1"),
    (r"\btwice\b|\bdouble\b|\btwo\b", "2"),
    (r"\bthrice\b|\btriple\b|\bthree\b", "3"),
    (r"\bfour\b", "4"),
    (r"\bfive\b", "5"),
)
_COLORS = ("cyan", "red", "orange", "magenta", "green", "blue", "white")
#: Words that say how the LED lights (after the synonyms above).
_HOW = frozenset(
    {"blink", "breathing", "fast", "slow", "solid", "steady", "sos", "dim", "d7", "listening", "safe", "off"}
)
#: Words a description may hold that say nothing of the pattern.
_FILLER = frozenset(
    [
        "then",
        "with",
        "and",
        "after",
        "before",
        "times",
        "time",
        "at",
        "boot",
        "led",
        "leds",
        "status",
        "light",
        "lights",
        "the",
        "of",
        "between",
        "tries",
        "try",
        "short",
        "long",
        "on",
        "in",
        "it",
        "its",
        "is",
        "was",
        "stays",
        "stay",
        "keeps",
        "kept",
        "followed",
        "by",
        "x",
        "every",
        "few",
        "seconds",
        "second",
        "again",
        "mode",
        "very",
        "slowly",
        "bright",
        "briefly",
        "some",
        "while",
        "when",
        "during",
        "update",
        "goes",
        "go",
        "dark",
        "and",
        "or",
        "but",
        "not",
        "no",
        "mostly",
        "always",
        "sometimes",
        "lit",
        "color",
        "colour",
        "rgb",
        "main",
    ]
)


def _normalize(text: str) -> str:
    out = " " + text.lower().replace("-", " ").replace(",", " , ") + " "
    for pattern, replacement in _SYNONYMS:
        out = re.sub(pattern, replacement, out)
    return " ".join(out.split())


def _number(word: str) -> int | None:
    """A count written in digits ("3"), never a sign; None for anything else, or more digits than a count has."""
    return decimal(word) if word[:1].isdecimal() else None


def _count_before(words: list[str], index: int) -> int | None:
    """A number written just before the word at `index` ("3 orange", "1 red blink")."""
    for back in (1, 2):
        if index - back >= 0 and (count := _number(words[index - back])) is not None:
            return count
    for ahead in (1, 2):  # "orange x3", "orange blink 3 times"
        if index + ahead < len(words) and (count := _number(words[index + ahead].lstrip("x"))) is not None:
            return count
    return None


def explain_led(description: str) -> list[LedReading]:
    """The patterns a description can mean, the likeliest first. A description this tool cannot read is one
    reading of `UNKNOWN` (which points at nothing), never a guess from one recognised word."""
    text = _normalize(description)
    words = text.replace(",", " ").split()
    colors = [(i, w) for i, w in enumerate(words) if w in _COLORS]
    color_set = {w for _, w in colors}
    fast = "fast" in words
    breathing = "breathing" in words

    def reading(key: str, count: int | None = None, note: str | None = None) -> LedReading:
        return LedReading(description, LED_PATTERNS[key], count, note)

    unknown = [w for w in words if w not in _COLORS and w not in _HOW and w not in _FILLER and _number(w) is None]
    says_how = any(w in _HOW for w in words)
    if (not color_set and not says_how) or (unknown and not says_how):
        words_unknown = f": {', '.join(repr(w) for w in unknown[:5])} not understood" if unknown else ""
        return [reading("unknown", note=f"Read no LED pattern from {description!r}{words_unknown}.")]
    if color_set and not says_how and len(color_set) == 1:
        # One colour alone ("purple"): how it lights decides what it means.
        (color,) = color_set
        both = {
            "cyan": ("blinking_cyan", "breathing_cyan"),
            "magenta": ("blinking_magenta", "breathing_magenta"),
            "green": ("blinking_green", "breathing_green"),
            "white": ("blinking_white", "breathing_white"),
        }.get(color)
        if both is not None:
            ask = "Say whether it blinks, blinks fast or breathes: each means something else."
            return [reading(both[0], note=ask), reading(both[1], note=ask)]
    if "sos" in words:
        numbers = [n for w in words if (n := _number(w)) is not None]
        count = numbers[0] if numbers else None
        note = None
        if count is not None:
            meaning = sos_meaning(count)
            note = f"SOS code {count}: {meaning}" if meaning else f"SOS code {count} is not a known panic code"
        return [reading("sos", count, note)]
    if color_set == {"orange"}:
        # Orange shows only as bursts between cyan (the firmware has no orange pattern of its own).
        index = next(i for i, w in colors if w == "orange")
        count = _count_before(words, index)
        after_cyan = "Orange shows only after cyan; read as blinking cyan, then the orange blinks."
        if count in (2, 3):
            return [reading(f"cyan_{count}_orange", count, after_cyan)]
        if count == 1:
            return [reading("cyan_orange", 1, after_cyan)]
    if "d7" in words or ("dim" in words and "blue" in color_set):
        return [reading("dim_blue_d7")]
    if "cyan" in color_set:
        burst = [(i, w) for i, w in colors if w in ("red", "orange", "magenta")]
        if burst:
            index, color = burst[0]
            count = _count_before(words, index)
            if color == "red":
                return [reading("cyan_red", count)]
            if color == "magenta":
                return [reading("cyan_magenta", count)]
            if count == 2:
                return [reading("cyan_2_orange", 2)]
            if count == 3:
                return [reading("cyan_3_orange", 3)]
            if count == 1:
                return [reading("cyan_orange", 1)]
            note = (
                "count the orange blinks: one burst after fast cyan is C6, two or three after blinking cyan are C2/C3"
            )
            if fast:
                return [reading("cyan_orange", None, note), reading("cyan_3_orange", None, note)]
            return [reading("cyan_3_orange", None, note), reading("cyan_2_orange", None, note)]
        if breathing:
            return [reading("breathing_cyan")]
        if fast:
            return [reading("fast_cyan")]
        return [reading("blinking_cyan"), reading("fast_cyan")]
    if "magenta" in color_set:
        return [reading("breathing_magenta" if breathing or "safe" in words else "blinking_magenta")]
    if "green" in color_set:
        return [reading("breathing_green" if breathing else "blinking_green")]
    if "blue" in color_set or "listening" in words:
        return [reading("blinking_blue")]
    if "white" in color_set:
        return [reading("breathing_white" if breathing else "blinking_white")]
    if "red" in color_set:
        return [reading("blinking_red")]
    return [reading("unknown", note=f"Read no LED pattern from {description!r}.")]
