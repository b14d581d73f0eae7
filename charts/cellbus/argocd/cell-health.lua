-- Argo CD health of a cellbus.io/v1alpha1 Cell, from the status cellbus-operator writes.
-- Lua 5.1 as Argo CD runs it: base, table and os only (no string library).
--
--   no status, or status.observedGeneration < metadata.generation  -> Progressing
--   a condition False with a reason only a person can fix           -> Degraded
--     Scheduled (and Ready): PoolNotFound NoMatchingPool SeveralPools PoolInvalid
--       InvalidSpec Conflict; ModuleVerified (and Ready): ModuleMissing InvalidSpec;
--     Ready: NotLoaded (a pod could not load the module);
--     DatabaseReady: DatabaseNotConfigured (the operator has no admin database)
--   any other condition not True: the operator retries it           -> Progressing
--     Ready: Waiting, Deleting; Ready Unknown: NatsUnavailable;
--     DatabaseReady: DatabaseUnavailable; StreamReady: StreamFailed; reasons not
--     listed here
--   Ready=True and every other condition True                       -> Healthy
--
-- Ready only says that a pod answers the Cell's $ping, so a Cell whose database or
-- stream is not ready is not Healthy even when Ready is True. Conditions older than
-- metadata.generation are ignored: the operator leaves behind conditions it no longer
-- sets (DatabaseReady after spec.database is removed). Argo CD fails a sync with waves
-- on Degraded, so retried failures stay Progressing.
local hs = {}
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. (generation or 1)
  return hs
end

local fixable = {
  PoolNotFound = true, NoMatchingPool = true, SeveralPools = true, PoolInvalid = true,
  InvalidSpec = true, Conflict = true, ModuleMissing = true, NotLoaded = true,
  DatabaseNotConfigured = true,
}

local function describe(c)
  local reason = c.reason or c.type
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end

local ready = nil
local pending = nil
for _, c in ipairs(status.conditions or {}) do
  if c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation then
    if c.status == "False" and fixable[c.reason] then
      hs.status = "Degraded"
      hs.message = describe(c)
      return hs
    end
    if c.type == "Ready" then
      ready = c
    elseif c.status ~= "True" and pending == nil then
      pending = c
    end
  end
end

if pending ~= nil then
  hs.status = "Progressing"
  hs.message = describe(pending)
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
