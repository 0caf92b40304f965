"""``Interrupt``: SIGINT/SIGTERM during training become a checkpoint at the end of the current step."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, ClassVar

__all__ = ["Interrupt"]


class Interrupt:
    """SIGINT/SIGTERM during training: remember the signal (the loop stops after the current step and saves);
    a second one aborts at once (``KeyboardInterrupt``). Handlers are installed only in the main thread.

    The same signal again within ``REPEAT_WINDOW`` seconds is the first one forwarded, not a second request:
    a scheduler signals every process of a job and ``torchrun`` passes the signal it got on to its ranks (and
    a terminal's Ctrl-C reaches torchrun and the ranks alike), so each rank sees it twice, milliseconds apart."""

    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    REPEAT_WINDOW: ClassVar[float] = 2.0

    def __init__(self) -> None:
        self.signum = 0
        self._first = 0.0  # time.monotonic() of the first signal
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.NAMES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, self._forwarded(old) if self._is_forward(sig) else old)
        self._old.clear()

    def _is_forward(self, signum: int) -> bool:
        """The signal this run stopped for, again within the window: a launcher's forward of it."""
        return self.signum == signum and time.monotonic() - self._first < self.REPEAT_WINDOW

    def _forwarded(self, old: Any) -> Any:
        """The handler left for the rest of the window after a run stopped on a signal: the launcher's forward of it
        can arrive after the loop (a short step) while the run still writes its summary, and must not kill it.
        Past the window the handler the run found is put back and the signal delivered to it."""
        previous = old if old is not None else signal.SIG_DFL

        def handler(signum: int, frame: Any) -> None:
            if self._is_forward(signum):
                return
            signal.signal(signum, previous)
            signal.raise_signal(signum)

        return handler

    def _handle(self, signum: int, frame: Any) -> None:
        if self._is_forward(signum):
            return  # the same signal forwarded by a launcher: still finishing the step and saving
        if self.signum:
            raise KeyboardInterrupt(f"second {self.NAMES.get(signum, signum)}: aborted without saving")
        self.signum, self._first = signum, time.monotonic()
        os.write(2, f"\nlowbit train: {self.NAMES.get(signum, signum)} received: finishing this step and saving a "
                    f"checkpoint (send it again after {self.REPEAT_WINDOW:g} s to abort at once)\n".encode())
