// What a VM of the list `GET .../virtualMachines?$expand=instanceView` means for the heat map: one
// state per instance, each with a colour (style.css), a glyph and a word, so colour is never the only cue.

export const STATES = {
  healthy: { label: "Healthy", glyph: "✓", help: "running and its health signal says healthy" },
  running: { label: "Running", glyph: "●", help: "running; no health signal, or it is still starting" },
  upgrading: { label: "Upgrading", glyph: "↻", help: "being reimaged or updated" },
  unhealthy: { label: "Unhealthy", glyph: "!", help: "the health signal says unhealthy or unknown" },
  failed: { label: "Failed", glyph: "✕", help: "provisioning failed" },
  stopped: { label: "Stopped", glyph: "■", help: "stopped or deallocated" },
  unknown: { label: "Unknown", glyph: "?", help: "no state reported" },
};
export const STATE_ORDER = ["healthy", "running", "upgrading", "unhealthy", "failed", "stopped", "unknown"];
export const OLD_MODEL = {
  label: "Old model",
  glyph: "◆",
  help: "not on the latest model (latestModelApplied = false)",
};

function statusCode(view, prefix) {
  const found = ((view && view.statuses) || []).find((s) => (s.code || "").startsWith(prefix));
  return found ? found.code.slice(prefix.length).toLowerCase() : null;
}

export function healthOf(vm) {
  const view = vm.properties.instanceView || {};
  const health = view.vmHealth && view.vmHealth.status;
  return health && health.code ? health.code.replace(/^HealthState\//i, "").toLowerCase() : null;
}

// One state per instance; the order of the checks is the order of importance.
export function stateOf(vm) {
  const view = vm.properties.instanceView || {};
  const provisioning = (statusCode(view, "ProvisioningState/") || vm.properties.provisioningState || "")
    .toLowerCase();
  const power = statusCode(view, "PowerState/");
  const health = healthOf(vm);
  if (provisioning === "failed") return "failed";
  if (["updating", "creating", "deleting"].includes(provisioning)) return "upgrading";
  if (["starting"].includes(power)) return "upgrading";
  if (["stopped", "deallocated", "stopping", "deallocating"].includes(power)) return "stopped";
  if (health === "unhealthy" || health === "unknown") return "unhealthy";
  if (health === "healthy") return "healthy";
  if (power === "running") return "running";
  return "unknown";
}

export function zoneOf(vm) {
  const zones = vm.zones || (vm.properties.instanceView || {}).zones || [];
  return zones.length ? String(zones[0]) : null;
}

export function updateDomainOf(vm) {
  const view = vm.properties.instanceView || {};
  return Number.isInteger(view.platformUpdateDomain) ? view.platformUpdateDomain : 0;
}

export function imageVersionOf(vm) {
  const reference = (vm.properties.storageProfile || {}).imageReference || {};
  return reference.exactVersion || reference.version || reference.id || "";
}

export function isOldModel(vm) {
  return vm.properties.latestModelApplied === false;
}

// Instances grouped for the heat map: rows are update domains (ascending), columns are zones.
export function layout(vms) {
  const byNumber = (a, b) => String(a).localeCompare(String(b), "en", { numeric: true });
  const zones = [...new Set(vms.map(zoneOf))].sort(byNumber);
  const domains = [...new Set(vms.map(updateDomainOf))].sort((a, b) => a - b);
  const rows = domains.map((domain) => {
    const members = vms.filter((vm) => updateDomainOf(vm) === domain);
    const cells = zones.map((zone) =>
      members
        .filter((vm) => zoneOf(vm) === zone)
        .sort((a, b) => Number(a.instanceId) - Number(b.instanceId)),
    );
    return { domain, members, cells };
  });
  return { zones, rows };
}

// The batch size the engine will use: ⌊percent × count⌋, at least one (docs/rolling-upgrades.md).
export function batchSize(percent, count) {
  return Math.max(1, Math.floor((percent * count) / 100));
}
