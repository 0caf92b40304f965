"""The errors ``lowbit train`` raises for a run it refuses or stops (a leaf: every room of the trainer may raise them)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "NonFiniteLossError", "RunExistsError"]


class DataError(ValueError):
    """The training data is unusable (too many bad samples, a prepared folder that does not match its manifest)."""


class RunExistsError(ValueError):
    """``--out`` already holds a run (neither ``--resume`` nor ``--overwrite`` given)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf (or the weights did); the run stopped without saving the bad state."""

    def __init__(self, step: int, value: float, checkpoint: Path | None, checkpoint_step: int | None, what: str = "loss") -> None:
        self.step, self.value, self.checkpoint, self.checkpoint_step = step, value, checkpoint, checkpoint_step
        kept = (
            f"last good checkpoint: {checkpoint} (step {checkpoint_step})"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(f"{what} is {value} at step {step}: stopped without saving this state; {kept}")
