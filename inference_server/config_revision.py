"""Which model config to serve when two sources carry it: the mounted file (the ConfigMap, which
the kubelet copies into the pod late: up to a minute and more) and the operator's push
(`PUT /admin/config`, seconds). Both carry the operator's monotonic `revision`; the newer one
wins, whichever source brings it, so a late kubelet copy of an older config never undoes a newer
push, and a pod that missed a push still converges when the file arrives.

The rule (`admit`) is pure; `RevisionGate` applies it on the event loop. The decision and the
bookkeeping of the newest revision happen in one synchronous step (no await between them), so
two offers racing each other are ordered by revision, not by which load finishes first.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from inference_server.config import ConfigError, ModelConfig, read_model_config
from inference_server.model_slot import ModelSlot, ReloadOutcome

log = logging.getLogger("inference_server.config_revision")

APPLY = "apply"
STALE = "stale"        # an older revision than one already taken: ignored
CURRENT = "current"    # the revision already taken (the other source's copy of it): nothing to do


@dataclass(frozen=True)
class Admission:
    verdict: str       # APPLY | STALE | CURRENT
    newest: int | None  # the newest revision taken after this offer


def admit(newest: int | None, revision: int | None) -> Admission:
    """Whether a config carrying `revision` is served, given the newest revision taken so far.

    - No revision (a hand-written file, an operator from before revisions): served, as a file
      change always was; it leaves the newest revision as it was.
    - Nothing taken yet, or a newer revision: served.
    - The same revision: already taken from the other source (the operator writes one revision
      once, with one content): nothing to do.
    - An older revision: a late copy; ignored.
    """
    if revision is None:
        return Admission(APPLY, newest)
    if newest is None or revision > newest:
        return Admission(APPLY, revision)
    if revision == newest:
        return Admission(CURRENT, newest)
    return Admission(STALE, newest)


class RevisionGate:
    """The single way a config reaches the slot: the file watcher, the start-up load,
    `POST /admin/reload` and `PUT /admin/config` all pass through `offer`."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self.newest: int | None = None
        self.ignored = 0  # offers refused as stale (tests and /v1/models read it)

    def admit(self, config: ModelConfig, source: str) -> Admission:
        """Decide and record, synchronously (see the module docstring)."""
        admission = admit(self.newest, config.revision)
        if admission.verdict == STALE:
            self.ignored += 1
            log.info("%s config revision %s (version %s) ignored: revision %s is newer", source,
                     config.revision, config.version, self.newest)
        self.newest = admission.newest
        return admission

    async def apply(self, config: ModelConfig, force: bool = False) -> ReloadOutcome:
        """Load an admitted config, unless a newer revision was admitted while this one waited
        for the slot (loads are serialized: the newer one follows and would replace it anyway)."""
        if config.revision is not None and self.newest is not None and config.revision < self.newest:
            return ReloadOutcome("unchanged", "superseded", config.version,
                                 f"revision {config.revision} superseded by {self.newest}", time.time())
        return await self.slot.reload(force=force, config=config)

    async def offer(self, config: ModelConfig, source: str, force: bool = False) -> ReloadOutcome:
        admission = self.admit(config, source)
        if admission.verdict != APPLY:
            return outcome_of(admission, config)
        return await self.apply(config, force=force)

    async def offer_file(self, force: bool = False) -> ReloadOutcome:
        """Read the mounted file and offer it; an unreadable or invalid file is recorded as a
        failed reload by the slot (the serving version stays)."""
        try:
            config, _ = read_model_config(self.slot.config_path)
        except ConfigError:
            return await self.slot.reload(force=force)
        return await self.offer(config, "file", force=force)


def outcome_of(admission: Admission, config: ModelConfig) -> ReloadOutcome:
    """What an offer that loads nothing answers."""
    if admission.verdict == STALE:
        return ReloadOutcome("ignored", "stale_revision", config.version,
                             f"revision {config.revision} is older than revision {admission.newest}, "
                             "already taken; ignored", time.time())
    return ReloadOutcome("unchanged", "ok", config.version, f"revision {config.revision} already taken",
                         time.time())
