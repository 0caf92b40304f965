"""lowbit.monitor: loss-spike diagnostics (SPEC §4): per-tensor RMS of the Adam update and its spikes; feature
magnitudes (max |activation| per transformer block)."""

from lowbit.monitor.activations import ActivationMonitor, find_blocks
from lowbit.monitor.plot import plot_spikes, read_metrics_csv
from lowbit.monitor.rms import RMSMonitor, adam_rms
from lowbit.monitor.spikes import LossSpike, RMSPrecursor, find_loss_spikes, find_spikes, rms_precursors

__all__ = [
    "ActivationMonitor",
    "LossSpike",
    "RMSMonitor",
    "RMSPrecursor",
    "adam_rms",
    "find_blocks",
    "find_loss_spikes",
    "find_spikes",
    "plot_spikes",
    "read_metrics_csv",
    "rms_precursors",
]
