"""The phases of a rollout, as written to `status.phase`."""
from __future__ import annotations

PENDING = "Pending"
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTING = "Promoting"
SUCCEEDED = "Succeeded"
ROLLING_BACK = "RollingBack"
ROLLED_BACK = "RolledBack"
FAILED_PHASE = "Failed"
CANARY_PHASES = (PROGRESSING, PAUSED)

MANUAL_PAUSE = "ManualPause"  # the Paused condition's reason at a `pause: {}` step
USER_PAUSE = "UserPause"  # the Paused condition's reason while the `asr.rollout.dev/pause` annotation is set
FINISHED_PHASES = (SUCCEEDED, ROLLED_BACK, FAILED_PHASE)  # no canary step runs in these
