"""``Interrupt``: SIGINT/SIGTERM during training become a checkpoint at the end of the current step."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, ClassVar

__all__ = ["Interrupt"]


class Interrupt:
    """SIGINT/SIGTERM during training: remember the signal (the loop stops after the current step and saves);
    a second one aborts at once (``KeyboardInterrupt``). Handlers are installed only in the main thread."""

    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.NAMES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"second {self.NAMES.get(signum, signum)}: aborted without saving")
        self.signum = signum
        os.write(2, f"\nlowbit train: {self.NAMES.get(signum, signum)} received: finishing this step and saving a "
                    "checkpoint (send it again to abort at once)\n".encode())
