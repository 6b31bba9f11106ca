"""Output that always fits a tool result.

MCP clients cap a message (1 MiB is common); 10 MB of output in one result
breaks them.  A run's stdout and stderr are read as they come, the first
``cap`` bytes of each kept and the rest counted and dropped, so the server
never holds more than the cap however much a command writes.  The text is
then cut again on its JSON-encoded size: a control byte costs six bytes
(``\\u0001``) in the message, so a byte cap alone would not bound it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream

#: The most a tool result's text may take, JSON-encoded: 1 MiB less room for
#: the envelope and the structured fields.
RESULT_BUDGET = 1024 * 1024 - 32 * 1024


@dataclass(eq=False)
class Captured:
    """The first ``cap`` bytes of a stream, and how many it carried."""

    cap: int
    data: bytearray
    total: int = 0

    @classmethod
    def create(cls, cap: int) -> Captured:
        return cls(cap=cap, data=bytearray())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    async def drain(self, stream: ByteReceiveStream) -> None:
        """Read ``stream`` to its end, keeping at most ``cap`` bytes."""
        try:
            while True:
                chunk = await stream.receive()
                self.total += len(chunk)
                room = self.cap - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass


def fit(text: str, budget: int) -> tuple[str, bool]:
    """``text`` cut so that its JSON encoding takes at most ``budget`` bytes;
    and whether it was cut."""
    size = _encoded(text)
    if size <= budget:
        return text, False
    while size > budget and text:
        # Cut in proportion, a little more each round: few rounds, never long.
        text = text[: max(0, int(len(text) * budget / size) - 16)]
        size = _encoded(text)
    return text, True


def _encoded(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def render(name: str, captured: Captured, budget: int) -> str:
    """One stream's section of a result, with a marker where it was cut."""
    text, cut = fit(captured.data.decode("utf-8", "replace"), budget)
    if not (cut or captured.truncated):
        return text
    shown = len(text.encode("utf-8", "replace"))
    return (f"{text}\n[... {name} truncated: {captured.total} bytes written, about {shown} "
            f"shown ...]")
