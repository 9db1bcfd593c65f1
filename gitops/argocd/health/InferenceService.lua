-- Argo CD health of a tandem.dev InferenceService, from status.phase and the Ready condition.
-- Healthy: Ready is True for the current generation. Degraded: phase Failed, or a spec the operator
-- refuses. Progressing: everything else (not yet observed, waiting for a model, rolling out).
local hs = {}
local function condition(status, kind)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end
local status = obj.status
if status == nil or status.conditions == nil then
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
for _, c in ipairs(status.conditions) do
  if c.status == "False" and c.reason == "InvalidSpec" then
    hs.status = "Degraded"
    hs.message = c.type .. " " .. c.reason .. ": " .. (c.message or "")
    return hs
  end
end
local ready = condition(status, "Ready")
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = ready ~= nil and (ready.reason .. ": " .. (ready.message or "")) or "Failed"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
else
  hs.status = "Progressing"
  hs.message = ready ~= nil and (ready.reason .. ": " .. (ready.message or "")) or (status.phase or "Pending")
end
return hs
