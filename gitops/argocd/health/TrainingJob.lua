-- Argo CD health of a tandem.dev TrainingJob, from status.phase and conditions.
-- Suspended: spec.suspend. Healthy: Succeeded. Degraded: Failed, or a spec the operator refuses.
-- Progressing: everything else (not yet observed, waiting for a pool, queued, pending, running).
local hs = {}
local function condition(status, kind)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
  return hs
end
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local pool = condition(status, "PoolResolved")
if pool ~= nil and pool.status == "False" then
  hs.status = pool.reason == "InvalidSpec" and "Degraded" or "Progressing"
  hs.message = pool.reason .. ": " .. (pool.message or "")
  return hs
end
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  local model = status.model
  hs.message = model ~= nil and ("Model " .. tostring(model.uri)) or "Training succeeded"
elseif status.phase == "Failed" then
  local failed = condition(status, "Failed")
  hs.status = "Degraded"
  hs.message = failed ~= nil and (failed.reason .. ": " .. (failed.message or "")) or "Training failed"
else
  local running = condition(status, "Running")
  hs.status = "Progressing"
  hs.message = status.phase .. (running ~= nil and running.message ~= nil and (": " .. running.message) or "")
end
return hs
