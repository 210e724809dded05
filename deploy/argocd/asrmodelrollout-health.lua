-- Argo CD health check for asr.rollout.dev/ASRModelRollout (Lua 5.1, Argo CD's sandbox).
-- Maps the operator's status to Argo CD health:
--   Succeeded                                    -> Healthy    (the spec's version is stable)
--   RolledBack, Failed, or InvalidSpec condition -> Degraded   (stays until a new commit)
--   Paused                                       -> Suspended  (waits for a person or a signal)
--   Pending, Progressing, Promoting, RollingBack -> Progressing
-- Status written for an older spec (observedGeneration < generation) is not an answer yet:
-- right after a GitOps commit the app shows Progressing, never the previous Healthy.
local hs = {}

local function progressing(message)
  hs.status = "Progressing"
  hs.message = message
  return hs
end

if obj.status == nil or obj.status.phase == nil then
  return progressing("Waiting for the operator to report a status")
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  return progressing("Waiting for the operator to observe generation " .. tostring(generation))
end

if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "InvalidSpec" and condition.status == "True" then
      hs.status = "Degraded"
      hs.message = "Invalid spec: " .. tostring(condition.message or condition.reason or "")
      return hs
    end
  end
end

local phase = status.phase
local detail = status.message or ""
local canary = status.canaryVersion or "?"

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Serving " .. tostring(status.stableVersion or "?")
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = phase .. " " .. tostring(status.failedVersion or canary) .. ": " .. tostring(detail)
  if status.stableVersion ~= nil then
    hs.message = hs.message .. " (serving " .. tostring(status.stableVersion) .. ")"
  end
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused at " .. tostring(status.canaryWeight or 0) .. "% on " .. canary .. ": " .. tostring(detail)
else
  return progressing(phase .. ": canary " .. canary .. " at " .. tostring(status.canaryWeight or 0) ..
    "%, step " .. tostring(status.currentStep or 0))
end
return hs
