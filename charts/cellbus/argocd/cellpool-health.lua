-- Argo CD health of a cellbus.io/v1alpha1 CellPool, from the status cellbus-operator
-- writes. Lua 5.1 as Argo CD runs it: base, table and os only (no string library).
--
--   no status, or status.observedGeneration < metadata.generation  -> Progressing
--   Degraded=True: ReplicasUnavailable (the rollout is done and fewer
--     runtime pods are ready than wanted) or InvalidSpec              -> Degraded
--   Progressing=True: RollingOut (the runtime Deployment is rolling
--     out; pods not ready yet are expected)                           -> Progressing
--   Ready=True                                                       -> Healthy
--   otherwise (no Ready condition yet, Ready False or Unknown)      -> Progressing
--
-- Progressing=True wins over Ready=True, as Argo CD's own Deployment check waits for
-- the rollout to finish. Conditions older than metadata.generation are ignored.
local hs = {}
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. (generation or 1)
  return hs
end

local function describe(c)
  local reason = c.reason or c.type
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end

local current = {}
for _, c in ipairs(status.conditions or {}) do
  if c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation then
    current[c.type] = c
  end
end

local degraded, progressing, ready = current.Degraded, current.Progressing, current.Ready
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
elseif ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
else
  hs.status = "Progressing"
  hs.message = describe(ready)
end
return hs
