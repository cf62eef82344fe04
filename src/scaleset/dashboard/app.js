// The scaleset dashboard: a heat map of a scale set's instances (one row per update domain, M-5, M-6),
// its model's image, manual upgrades per update domain, rolling upgrades with a chosen batch size, live
// progress and the OS upgrade history. Every call goes to the ARM API with the user's token (api.js).

import { Api, ApiError } from "./api.js";
import {
  OLD_MODEL,
  STATE_ORDER,
  STATES,
  batchSize,
  healthOf,
  imageVersionOf,
  isOldModel,
  layout,
  stateOf,
  updateDomainOf,
  zoneOf,
} from "./states.js";

const FAST_MS = 1500; // while an upgrade runs or an instance changes
const SLOW_MS = 5000;
const NAV_MS = 15000;
const HIDDEN_MS = 30000; // a tab nobody looks at asks rarely
const ACTIVE_RUN = new Set(["RollingForward", "RollingBack"]);
const RUN_LABELS = {
  RollingForward: "Rolling forward",
  RollingBack: "Rolling back",
  Completed: "Completed",
  Cancelled: "Cancelled",
  Faulted: "Faulted",
};
const TOKEN_KEY = "scaleset.token";
const SUBSCRIPTION_KEY = "scaleset.subscription";
const DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000";

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------ DOM helpers
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

// Only touches the DOM when the content changed: live regions then announce real changes only.
function renderIfChanged(node, key, build) {
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  replace(node, build());
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function formatTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString(undefined, { hour12: false });
}

function imageText(reference) {
  if (!reference) return "—";
  if (reference.id) return reference.id;
  const urn = [reference.publisher, reference.offer, reference.sku, reference.version].join(":");
  return reference.exactVersion && reference.exactVersion !== reference.version
    ? `${urn} (${reference.exactVersion})`
    : urn;
}

// -------------------------------------------------------------------------------------------- state
const session = { api: null, navTimer: null };
const view = {
  group: null,
  name: null,
  generation: 0,
  set: null,
  vms: [],
  addresses: new Map(),
  latest: null, // RollingUpgradeStatusInfo, or null when the set never had one
  history: null, // {value} | {unavailable: message}
  selectedId: null,
  hoverId: null,
  signatures: new Map(), // instance id → what it looked like at the previous poll
  touched: new Set(), // instances whose state changed while the current run was active
  following: 0, // long-running operations the page is following
  timer: null,
  refreshing: null,
  again: false,
  modelFilledFor: null,
};

// ----------------------------------------------------------------------------------------- errors
function showBanner(message) {
  const banner = $("global-error");
  banner.textContent = message;
  banner.hidden = !message;
}

function describe(error) {
  if (error instanceof ApiError) return error.describe();
  return String((error && error.message) || error);
}

function logActivity(text, outcome = "info") {
  const list = $("activity");
  const time = new Date().toLocaleTimeString(undefined, { hour12: false });
  list.prepend(el("li", { class: `activity-${outcome}` }, el("time", { text: time }), " ", text));
  while (list.children.length > 30) list.lastElementChild.remove();
}

// ------------------------------------------------------------------------------------------ sign-in
function showLogin(message = "") {
  clearTimeout(view.timer);
  clearTimeout(session.navTimer);
  session.api = null;
  $("workspace").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  const subscription = $("subscription").value.trim() || DEFAULT_SUBSCRIPTION;
  if (!token) {
    $("login-error").textContent = "Paste an API token first.";
    return;
  }
  const api = new Api(token, subscription);
  try {
    await api.get(`${api.base}/resourcegroups`);
  } catch (error) {
    $("login-error").textContent = `Sign-in failed: ${describe(error)}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(SUBSCRIPTION_KEY, subscription);
  $("token").value = "";
  startSession(api);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(SUBSCRIPTION_KEY);
  showBanner("");
  showLogin();
}

function startSession(api) {
  session.api = api;
  $("login").hidden = true;
  $("workspace").hidden = false;
  $("session").hidden = false;
  $("session-info").textContent = `Subscription ${api.subscription}`;
  loadNavigation();
  route();
}

// -------------------------------------------------------------------------------------- navigation
function groupOfId(id) {
  const match = /\/resourceGroups\/([^/]+)\//i.exec(id || "");
  return match ? decodeURIComponent(match[1]) : "";
}

function setHash(group, name) {
  return `#/groups/${encodeURIComponent(group)}/scalesets/${encodeURIComponent(name)}`;
}

async function loadNavigation() {
  const api = session.api;
  const tree = $("nav-tree");
  try {
    const [groups, sets] = await Promise.all([
      api.list(`${api.base}/resourcegroups`),
      api.list(`${api.base}/providers/Microsoft.Compute/virtualMachineScaleSets`),
    ]);
    const byGroup = new Map(groups.map((g) => [g.name.toLowerCase(), { name: g.name, sets: [] }]));
    for (const set of sets) {
      const group = groupOfId(set.id);
      if (!byGroup.has(group.toLowerCase())) byGroup.set(group.toLowerCase(), { name: group, sets: [] });
      byGroup.get(group.toLowerCase()).sets.push(set);
    }
    const sections = [...byGroup.values()].sort((a, b) => a.name.localeCompare(b.name));
    const key = JSON.stringify(
      sections.map((g) => [g.name, g.sets.map((s) => [s.name, s.sku.capacity, s.properties.upgradePolicy.mode])]),
    );
    if (tree.dataset.key === key) return;
    tree.dataset.key = key;
    if (!sections.length) {
      replace(tree, el("p", { class: "muted", text: "No resource groups yet." }));
      return;
    }
    replace(
      tree,
      sections.map((group) =>
        el(
          "section",
          { class: "nav-group" },
          el(
            "h3",
            { class: "nav-group-name" },
            el("span", { class: "muted small", text: "Resource group " }),
            group.name,
          ),
          group.sets.length
            ? el(
                "ul",
                {},
                group.sets
                  .sort((a, b) => a.name.localeCompare(b.name))
                  .map((set) =>
                    el(
                      "li",
                      {},
                      el(
                        "a",
                        {
                          href: setHash(group.name, set.name),
                          class: "nav-link",
                          "data-set": `${group.name}/${set.name}`,
                        },
                        el("span", { class: "nav-name", text: set.name }),
                        el("span", {
                          class: "nav-meta",
                          text: `${set.sku.capacity} × ${set.properties.upgradePolicy.mode}`,
                        }),
                      ),
                    ),
                  ),
              )
            : el("p", { class: "muted small", text: "No scale sets." }),
        ),
      ),
    );
    markCurrentLink();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showLogin(describe(error));
    delete tree.dataset.key;
    replace(tree, el("p", { class: "form-error", text: `Could not list scale sets: ${describe(error)}` }));
  } finally {
    // New sets and groups show up without a reload; nothing is redrawn when nothing changed.
    clearTimeout(session.navTimer);
    if (session.api === api) session.navTimer = setTimeout(loadNavigation, NAV_MS);
  }
}

function markCurrentLink() {
  const current = view.group && view.name ? `${view.group}/${view.name}` : null;
  for (const link of document.querySelectorAll(".nav-link")) {
    if (link.dataset.set === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (!session.api) return;
  const match = /^#\/groups\/([^/]+)\/scalesets\/([^/]+)$/.exec(window.location.hash);
  if (!match) {
    view.group = view.name = null;
    $("empty-state").hidden = false;
    $("set-content").hidden = true;
    markCurrentLink();
    return;
  }
  openSet(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
}

function openSet(group, name) {
  clearTimeout(view.timer);
  Object.assign(view, {
    group,
    name,
    generation: view.generation + 1,
    set: null,
    vms: [],
    addresses: new Map(),
    latest: null,
    history: null,
    selectedId: null,
    hoverId: null,
    signatures: new Map(),
    touched: new Set(),
    modelFilledFor: null,
  });
  for (const id of ["heatmap", "instance-detail", "upgrade-progress", "history", "set-facts"]) {
    delete $(id).dataset.key;
  }
  replace($("heatmap"), el("p", { class: "muted", text: "Loading instances…" }));
  replace($("activity"));
  $("empty-state").hidden = true;
  $("set-content").hidden = false;
  $("set-group").textContent = `Resource group ${group}`;
  $("set-title").textContent = name;
  for (const id of ["model-error", "rolling-error"]) $(id).textContent = "";
  markCurrentLink();
  refreshNow();
}

// ----------------------------------------------------------------------------------------- polling
function runActive() {
  return Boolean(view.latest && ACTIVE_RUN.has(view.latest.properties.runningStatus.code));
}

function busy() {
  return runActive() || view.following > 0 || view.vms.some((vm) => stateOf(vm) === "upgrading");
}

function refreshNow() {
  clearTimeout(view.timer);
  if (view.refreshing) {
    view.again = true;
    return view.refreshing;
  }
  view.refreshing = refresh().finally(() => {
    view.refreshing = null;
    if (view.again) {
      view.again = false;
      refreshNow();
    } else if (session.api && view.name) {
      view.timer = setTimeout(refreshNow, document.hidden ? HIDDEN_MS : busy() ? FAST_MS : SLOW_MS);
    }
  });
  return view.refreshing;
}

async function optional(promise, fallback) {
  try {
    return await promise;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return fallback(error);
    throw error;
  }
}

async function refresh() {
  const api = session.api;
  const { group, name, generation } = view;
  if (!api || !name) return;
  const path = api.setPath(group, name);
  try {
    const [set, vms, latest, history] = await Promise.all([
      api.get(path),
      api.list(`${path}/virtualMachines?$expand=instanceView`),
      optional(api.get(`${path}/rollingUpgrades/latest`), () => null),
      // Another part of scaleset serves the history; an older server answers 404.
      optional(
        api.list(`${path}/osUpgradeHistory`).then((value) => ({ value })),
        (error) => ({ unavailable: error.describe() }),
      ),
    ]);
    if (generation !== view.generation) return;
    if (vms.some((vm) => !view.addresses.has(vm.instanceId))) {
      const nics = await optional(api.list(`${path}/networkInterfaces`), () => []);
      for (const nic of nics) {
        const instanceId = nic.properties.virtualMachine.id.split("/").pop();
        const ip = ((nic.properties.ipConfigurations || [])[0] || {}).properties || {};
        view.addresses.set(instanceId, ip.privateIPAddress || "");
      }
    }
    if (generation !== view.generation) return;
    Object.assign(view, { set, vms, latest, history });
    trackChanges();
    showBanner("");
    render();
  } catch (error) {
    if (generation !== view.generation) return;
    if (error instanceof ApiError && error.status === 401) return showLogin(describe(error));
    if (error instanceof ApiError && error.status === 404 && error.what && error.what.startsWith("GET")) {
      showBanner(`The scale set ${group}/${name} was not found: ${describe(error)}`);
      return;
    }
    showBanner(`Refreshing ${group}/${name} failed: ${describe(error)}`);
  }
}

// The current batch: instances whose state changed while the run is active and have not settled since.
function trackChanges() {
  const active = runActive();
  if (!active) view.touched.clear();
  for (const vm of view.vms) {
    const signature = [stateOf(vm), imageVersionOf(vm), isOldModel(vm)].join("|");
    const before = view.signatures.get(vm.instanceId);
    if (active && before !== undefined && before !== signature) view.touched.add(vm.instanceId);
    view.signatures.set(vm.instanceId, signature);
  }
  for (const id of [...view.touched]) {
    const vm = view.vms.find((v) => v.instanceId === id);
    if (!vm || (settled(vm) && !isOldModel(vm))) view.touched.delete(id);
  }
}

function settled(vm) {
  const state = stateOf(vm);
  if (state === "healthy") return true;
  // Without a health signal, running is as good as it gets.
  return state === "running" && healthOf(vm) === null;
}

function inCurrentBatch(vm) {
  return runActive() && (stateOf(vm) === "upgrading" || view.touched.has(vm.instanceId));
}

// ----------------------------------------------------------------------------------------- render
function render() {
  renderFacts();
  renderSummary();
  renderHeatmap();
  renderDetail();
  renderProgress();
  renderHistory();
  fillModelForm();
  $("refreshed-at").textContent = `Updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
}

function healthSource(profile) {
  const probe = profile.networkProfile && profile.networkProfile.healthProbe;
  if (probe && probe.id) return `Load balancer probe ${probe.id.split("/").slice(-3).join("/")}`;
  const extensions = ((profile.extensionProfile || {}).extensions || []).map((e) => e.properties || {});
  if (extensions.some((e) => /^ApplicationHealth/i.test(e.type || ""))) return "Application Health extension";
  return "None (running and provisioned)";
}

function renderFacts() {
  const set = view.set;
  const properties = set.properties;
  const profile = properties.virtualMachineProfile;
  const policy = properties.upgradePolicy || {};
  const rolling = policy.rollingUpgradePolicy || {};
  const facts = [
    ["Location", set.location],
    ["Upgrade mode", policy.mode],
    ["Capacity", String(set.sku.capacity)],
    ["Image", imageText(profile.storageProfile.imageReference)],
    ["Zones", (set.zones || []).join(", ") || "none"],
    ["Health", healthSource(profile)],
    ["Max batch", `${rolling.maxBatchInstancePercent ?? 20} %`],
    ["State", properties.provisioningState],
  ];
  renderIfChanged($("set-facts"), JSON.stringify(facts), () =>
    facts.map(([term, value]) => el("div", { class: "fact" }, el("dt", { text: term }), el("dd", { text: value }))),
  );
  const count = view.vms.length;
  const percent = Number($("batch-percent").value);
  $("batch-hint").textContent =
    Number.isInteger(percent) && percent >= 5 && percent <= 100
      ? `${batchSize(percent, count)} of ${count} instances per batch, at most; ` +
        "a batch never spans update domains or zones."
      : "A whole number from 5 to 100.";
}

function renderSummary() {
  const counts = new Map();
  for (const vm of view.vms) counts.set(stateOf(vm), (counts.get(stateOf(vm)) || 0) + 1);
  const parts = [`${view.vms.length} instance${view.vms.length === 1 ? "" : "s"}`];
  for (const state of STATE_ORDER) {
    if (counts.get(state)) parts.push(`${counts.get(state)} ${STATES[state].label.toLowerCase()}`);
  }
  const old = view.vms.filter(isOldModel).length;
  parts.push(old ? `${old} on an old model` : "all on the latest model");
  const text = parts.join(" · ");
  if ($("set-summary").textContent !== text) $("set-summary").textContent = text;
}

function cellLabel(vm) {
  const state = STATES[stateOf(vm)];
  const parts = [`Instance ${vm.instanceId}`, state.label];
  if (isOldModel(vm)) parts.push("old model");
  if (inCurrentBatch(vm)) parts.push("in the current batch");
  parts.push(`image ${imageVersionOf(vm)}`);
  const zone = zoneOf(vm);
  if (zone) parts.push(`zone ${zone}`);
  parts.push(`update domain ${updateDomainOf(vm)}`);
  return parts.join(", ");
}

function renderCell(vm, focusable) {
  const state = stateOf(vm);
  const classes = ["cell", `s-${state}`];
  if (isOldModel(vm)) classes.push("old");
  if (inCurrentBatch(vm)) classes.push("batch");
  if (vm.instanceId === view.selectedId) classes.push("selected");
  return el(
    "button",
    {
      type: "button",
      class: classes.join(" "),
      "data-instance-id": vm.instanceId,
      "data-state": state,
      "data-old-model": isOldModel(vm) ? "true" : "false",
      "data-batch": inCurrentBatch(vm) ? "true" : "false",
      "aria-label": cellLabel(vm),
      "aria-pressed": vm.instanceId === view.selectedId ? "true" : "false",
      tabindex: focusable ? "0" : "-1",
    },
    el(
      "span",
      { class: "cell-top" },
      el("span", { class: "cell-id", text: vm.instanceId }),
      el("span", { class: "cell-glyph", "aria-hidden": "true", text: STATES[state].glyph }),
    ),
    el("span", { class: "cell-state", text: STATES[state].label }),
    el("span", { class: "cell-version", text: imageVersionOf(vm) }),
    isOldModel(vm) ? el("span", { class: "cell-old", text: `${OLD_MODEL.glyph} old model` }) : null,
  );
}

function renderHeatmap() {
  const container = $("heatmap");
  if (!view.vms.length) {
    renderIfChanged(container, "empty", () => el("p", { class: "muted", text: "This scale set has no instances." }));
    return;
  }
  const { zones, rows } = layout(view.vms);
  const focusId =
    view.selectedId && view.vms.some((vm) => vm.instanceId === view.selectedId)
      ? view.selectedId
      : rows[0].cells.flat()[0].instanceId;
  const key = JSON.stringify([
    view.vms.map((vm) => [vm.instanceId, cellLabel(vm), updateDomainOf(vm), zoneOf(vm)]),
    view.selectedId,
    focusId,
    busy(),
  ]);
  if (container.dataset.key === key) return;
  const focused = document.activeElement;
  const focusedId = focused && container.contains(focused) ? focused.dataset.instanceId || focused.dataset.ud : null;
  container.dataset.key = key;
  const zoneHeader = (zone) => (zone === null ? "Instances" : `Zone ${zone}`);
  const table = el(
    "table",
    { class: "heatmap", "aria-describedby": "heatmap-help" },
    el(
      "caption",
      { class: "visually-hidden" },
      `Instances of ${view.name}: one row per update domain, one column per zone.`,
    ),
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        el("th", { scope: "col", text: "Update domain" }),
        zones.map((zone) => el("th", { scope: "col", text: zoneHeader(zone) })),
        el("th", { scope: "col", text: "Manual upgrade" }),
      ),
    ),
    el(
      "tbody",
      {},
      rows.map((row) => {
        const old = row.members.filter(isOldModel).length;
        return el(
          "tr",
          { "data-ud": String(row.domain) },
          el(
            "th",
            { scope: "row", class: "ud-head" },
            el("span", { class: "ud-name", text: `UD ${row.domain}` }),
            el("span", {
              class: "ud-meta",
              text: plural(row.members.length, "instance") + (old ? ` · ${old} old` : ""),
            }),
          ),
          row.cells.map((cell, index) =>
            el(
              "td",
              { "data-zone": zones[index] ?? "" },
              el("div", { class: "cells" }, cell.map((vm) => renderCell(vm, vm.instanceId === focusId))),
            ),
          ),
          el(
            "td",
            { class: "ud-action" },
            el("button", {
              type: "button",
              class: "button small",
              "data-ud": String(row.domain),
              "data-action": "upgrade-ud",
              text: `Upgrade UD ${row.domain}`,
              "aria-label":
                `Upgrade update domain ${row.domain} ` +
                `(${plural(row.members.length, "instance")}, ${old} on an old model)`,
              title: old ? `Apply the latest model to the ${old} old instance(s)` : "Already on the latest model",
              disabled: old === 0 || runActive(),
            }),
          ),
        );
      }),
    ),
  );
  replace(
    container,
    table,
    el(
      "p",
      { id: "heatmap-help", class: "hint" },
      "Arrow keys move between instances; Enter selects one. Pointing at an instance shows its instance view.",
    ),
  );
  if (focusedId !== null && focusedId !== undefined) {
    const again =
      container.querySelector(`[data-instance-id="${CSS.escape(focusedId)}"]`) ||
      container.querySelector(`button[data-ud="${CSS.escape(focusedId)}"]`);
    if (again) again.focus();
  }
}

function renderLegend() {
  replace(
    $("legend"),
    STATE_ORDER.map((state) =>
      el(
        "li",
        { title: STATES[state].help },
        el("span", { class: `swatch s-${state}`, "aria-hidden": "true", text: STATES[state].glyph }),
        STATES[state].label,
      ),
    ),
    el(
      "li",
      { title: OLD_MODEL.help },
      el("span", { class: "swatch marker-old", "aria-hidden": "true", text: OLD_MODEL.glyph }),
      "Not on the latest model",
    ),
    el(
      "li",
      { title: "instances the running upgrade is working on" },
      el("span", { class: "swatch marker-batch", "aria-hidden": "true" }),
      "In the current batch",
    ),
  );
}

function renderDetail() {
  const id = view.hoverId ?? view.selectedId;
  const vm = view.vms.find((v) => v.instanceId === id);
  const node = $("instance-detail");
  if (!vm) {
    renderIfChanged(node, "none", () =>
      el("p", { class: "muted", text: "Point at or select an instance in the heat map to see its instance view." }),
    );
    return;
  }
  const iv = vm.properties.instanceView || {};
  const state = stateOf(vm);
  const reference = vm.properties.storageProfile.imageReference || {};
  const health = iv.vmHealth && iv.vmHealth.status;
  const rows = [
    ["State", `${STATES[state].glyph} ${STATES[state].label}${inCurrentBatch(vm) ? " (current batch)" : ""}`],
    ["Health", health ? `${health.displayStatus || health.code} (${health.code})` : "no health signal"],
    ["Model", isOldModel(vm) ? `${OLD_MODEL.glyph} old model` : "latest model"],
    ["Image", imageText(reference)],
    ["OS", [iv.osName, iv.osVersion].filter(Boolean).join(" ") || "—"],
    ["Zone", zoneOf(vm) ?? "none"],
    ["Update domain", String(updateDomainOf(vm))],
    ["Fault domain", String(iv.platformFaultDomain ?? "—")],
    ["Address", view.addresses.get(vm.instanceId) || "—"],
    ["Computer name", iv.computerName || "—"],
  ];
  const statuses = iv.statuses || [];
  const extensions = iv.extensions || [];
  const key = JSON.stringify([vm.instanceId, rows, statuses, extensions.map((e) => e.statuses)]);
  renderIfChanged(node, key, () => [
    el(
      "h3",
      { class: "detail-name" },
      el("span", { class: `swatch s-${state}`, "aria-hidden": "true", text: STATES[state].glyph }),
      vm.name,
    ),
    el(
      "dl",
      { class: "detail-list" },
      rows.map(([term, value]) => el("div", {}, el("dt", { text: term }), el("dd", { text: value }))),
    ),
    el("h4", { text: "Statuses" }),
    el(
      "ul",
      { class: "status-list" },
      statuses.map((s) =>
        el(
          "li",
          { class: `level-${(s.level || "Info").toLowerCase()}` },
          el("code", { text: s.code }),
          el("span", { text: ` ${s.displayStatus || ""}` }),
          s.message ? el("span", { class: "status-message", text: ` — ${s.message}` }) : null,
          s.time ? el("span", { class: "muted small", text: ` ${formatTime(s.time)}` }) : null,
        ),
      ),
      health
        ? el("li", {}, el("code", { text: health.code }), el("span", { text: ` ${health.displayStatus || ""}` }))
        : null,
    ),
    extensions.length ? el("h4", { text: "Extensions" }) : null,
    extensions.length
      ? el(
          "ul",
          { class: "status-list" },
          extensions.map((e) =>
            el(
              "li",
              {},
              el("strong", { text: e.name }),
              ` ${e.typeHandlerVersion || ""} `,
              el("span", { text: ((e.statuses || [])[0] || {}).displayStatus || "" }),
            ),
          ),
        )
      : null,
  ]);
}

function renderProgress() {
  const node = $("upgrade-progress");
  const badge = $("upgrade-badge");
  const latest = view.latest;
  const active = runActive();
  $("start-rolling").disabled = active;
  $("cancel-rolling").disabled = !active;
  if (!latest) {
    badge.textContent = "None yet";
    badge.className = "badge";
    renderIfChanged(node, "none", () => el("p", { class: "muted", text: "No rolling upgrade has run on this set." }));
    return;
  }
  const p = latest.properties;
  const status = p.runningStatus || {};
  const progress = p.progress || {};
  const code = status.code || "Unknown";
  badge.textContent = RUN_LABELS[code] || code;
  badge.className = `badge run-${code}`;
  const counts = {
    successful: progress.successfulInstanceCount || 0,
    failed: progress.failedInstanceCount || 0,
    inProgress: progress.inProgressInstanceCount || 0,
    pending: progress.pendingInstanceCount || 0,
  };
  const total = counts.successful + counts.failed + counts.inProgress + counts.pending;
  const batch = view.vms.filter(inCurrentBatch).map((vm) => vm.instanceId);
  const key = JSON.stringify([code, counts, status.lastAction, status.lastActionTime, p.error, batch]);
  renderIfChanged(node, key, () => {
    const bar = el("div", { class: "progress-bar", "aria-hidden": "true" });
    for (const [part, count] of Object.entries(counts)) {
      if (!count) continue;
      const segment = el("span", { class: `seg seg-${part}` });
      segment.style.width = `${(100 * count) / Math.max(total, 1)}%`;
      bar.append(segment);
    }
    return [
      el(
        "p",
        { class: "progress-text" },
        el("strong", { text: `${RUN_LABELS[code] || code}: ` }),
        `${counts.successful} of ${total} upgraded · ${counts.inProgress} in progress · ` +
          `${counts.pending} pending · ${counts.failed} failed`,
      ),
      bar,
      el(
        "dl",
        { class: "facts compact" },
        el("div", { class: "fact" }, el("dt", { text: "Started" }), el("dd", { text: formatTime(status.startTime) })),
        el(
          "div",
          { class: "fact" },
          el("dt", { text: "Last action" }),
          el("dd", { text: `${status.lastAction || "—"} at ${formatTime(status.lastActionTime)}` }),
        ),
        el(
          "div",
          { class: "fact" },
          el("dt", { text: "Batch size" }),
          el("dd", { text: `${(p.policy || {}).maxBatchInstancePercent ?? "—"} %` }),
        ),
        el(
          "div",
          { class: "fact" },
          el("dt", { text: "Current batch" }),
          el("dd", { text: batch.length ? `instance ${batch.join(", ")}` : "—" }),
        ),
      ),
      p.error ? el("p", { class: "form-error", text: `${p.error.code}: ${p.error.message}` }) : null,
    ];
  });
}

function progressText(progress) {
  const parts = [
    `${progress.successfulInstanceCount || 0} succeeded`,
    `${progress.failedInstanceCount || 0} failed`,
  ];
  if (progress.inProgressInstanceCount) parts.push(`${progress.inProgressInstanceCount} in progress`);
  if (progress.pendingInstanceCount) parts.push(`${progress.pendingInstanceCount} pending`);
  return parts.join(" · ");
}

function renderHistory() {
  const node = $("history");
  const history = view.history;
  if (!history) return;
  if (history.unavailable) {
    renderIfChanged(node, "unavailable", () =>
      el("p", {
        class: "muted",
        text: `This server does not serve the OS upgrade history yet (${history.unavailable}).`,
      }),
    );
    return;
  }
  const entries = history.value || [];
  renderIfChanged(node, JSON.stringify(entries), () => {
    if (!entries.length) return el("p", { class: "muted", text: "No OS upgrade has run on this set." });
    return el(
      "div",
      { class: "table-scroll" },
      el(
        "table",
        { class: "history" },
        el("caption", { class: "visually-hidden", text: "OS upgrade history, newest first" }),
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ["Started", "Ended", "Status", "Started by", "Target image", "Progress", "Rollback", "Error"].map((h) =>
              el("th", { scope: "col", text: h }),
            ),
          ),
        ),
        el(
          "tbody",
          {},
          entries.map((entry) => {
            const p = entry.properties || {};
            const status = p.runningStatus || {};
            const progress = p.progress || {};
            const rollback = p.rollbackInfo || {};
            const rolled = rollback.successfullyRolledbackInstanceCount || 0;
            const rollbackFailed = rollback.failedRolledbackInstanceCount || 0;
            return el(
              "tr",
              {},
              el("td", { text: formatTime(status.startTime) }),
              el("td", { text: formatTime(status.endTime) }),
              el(
                "td",
                {},
                el("span", {
                  class: `badge run-${status.code}`,
                  text: RUN_LABELS[status.code] || status.code || "—",
                }),
              ),
              el("td", { text: p.startedBy || "—" }),
              el("td", { text: imageText(p.targetImageReference) }),
              el("td", { text: progressText(progress) }),
              el("td", { text: rolled || rollbackFailed ? `${rolled} rolled back, ${rollbackFailed} failed` : "—" }),
              el("td", { text: p.error ? `${p.error.code}: ${p.error.message}` : "—" }),
            );
          }),
        ),
      ),
    );
  });
}

// ---------------------------------------------------------------------------------------- the model
async function fillModelForm() {
  const set = view.set;
  if (!set || view.modelFilledFor === view.generation) return;
  view.modelFilledFor = view.generation;
  const reference = set.properties.virtualMachineProfile.storageProfile.imageReference;
  $("image-publisher").value = reference.publisher || "";
  $("image-offer").value = reference.offer || "";
  $("image-sku").value = reference.sku || "";
  $("image-id").value = reference.id || "";
  $("batch-percent").value = String(
    ((set.properties.upgradePolicy || {}).rollingUpgradePolicy || {}).maxBatchInstancePercent ?? 20,
  );
  const mode = (set.properties.upgradePolicy || {}).mode;
  $("model-hint").textContent =
    mode === "Manual"
      ? "Manual mode: instances keep their model until you upgrade an update domain or start a rolling upgrade."
      : mode === "Rolling"
        ? "Rolling mode: a new model starts a rolling upgrade by itself."
        : "Automatic mode: a new model is applied to every instance at once.";
  await Promise.all([loadVersions(reference.version), loadSkus()]);
}

function imagesBase() {
  const api = session.api;
  const location = encodeURIComponent(view.set.location);
  const publisher = encodeURIComponent($("image-publisher").value.trim());
  const offer = encodeURIComponent($("image-offer").value.trim());
  return (
    `${api.base}/providers/Microsoft.Compute/locations/${location}/publishers/${publisher}` +
    `/artifacttypes/vmimage/offers/${offer}/skus`
  );
}

async function loadSkus() {
  const list = $("sku-options");
  try {
    const skus = await session.api.get(imagesBase());
    replace(list, (skus || []).map((s) => el("option", { value: s.name })));
  } catch {
    replace(list);
  }
}

async function loadVersions(current) {
  const select = $("image-version");
  const wanted = current ?? select.value;
  let versions = [];
  const sku = $("image-sku").value.trim();
  if (sku) {
    try {
      versions = (await session.api.get(`${imagesBase()}/${encodeURIComponent(sku)}/versions`)) || [];
    } catch {
      versions = [];
    }
  }
  const names = ["latest", ...versions.map((v) => v.name).reverse()];
  if (wanted && !names.some((n) => n.toLowerCase() === String(wanted).toLowerCase())) names.push(wanted);
  replace(
    select,
    names.map((name) => el("option", { value: name, text: name === "latest" ? "latest (newest published)" : name })),
  );
  select.value = names.find((n) => n.toLowerCase() === String(wanted || "latest").toLowerCase()) || "latest";
}

async function applyModel(event) {
  event.preventDefault();
  const error = $("model-error");
  error.textContent = "";
  const id = $("image-id").value.trim();
  const reference = id
    ? { id }
    : {
        publisher: $("image-publisher").value.trim(),
        offer: $("image-offer").value.trim(),
        sku: $("image-sku").value.trim(),
        version: $("image-version").value,
      };
  const text = imageText(reference);
  const button = $("apply-model");
  button.disabled = true;
  try {
    const api = session.api;
    const started = await api.call("PATCH", api.setPath(view.group, view.name), {
      properties: { virtualMachineProfile: { storageProfile: { imageReference: reference } } },
    });
    logActivity(`Model updated: image ${text}.`, "ok");
    follow(started, `Model update to ${text}`);
    view.modelFilledFor = null;
  } catch (failure) {
    error.textContent = describe(failure);
    logActivity(`Model update to ${text} refused: ${describe(failure)}`, "error");
  } finally {
    button.disabled = false;
    refreshNow();
  }
}

// ---------------------------------------------------------------------------------------- upgrades
// Follows an operation in the background and logs how it ended; the heat map shows the way there.
async function follow(started, what) {
  if (started.status !== 202 && !started.headers.get("Azure-AsyncOperation")) return;
  view.following += 1;
  const generation = view.generation;
  try {
    await session.api.follow(started, what);
    if (generation === view.generation) logActivity(`${what}: succeeded.`, "ok");
  } catch (failure) {
    if (generation === view.generation) logActivity(`${what}: ${describe(failure)}`, "error");
  } finally {
    view.following -= 1;
    if (generation === view.generation) refreshNow();
  }
}

async function upgradeDomain(domain) {
  const ids = view.vms.filter((vm) => updateDomainOf(vm) === domain).map((vm) => vm.instanceId);
  const what = `Manual upgrade of update domain ${domain} (instances ${ids.join(", ")})`;
  try {
    const api = session.api;
    const started = await api.call("POST", `${api.setPath(view.group, view.name)}/manualupgrade`, {
      instanceIds: ids,
    });
    logActivity(`${what} started.`);
    follow(started, what);
  } catch (failure) {
    showBanner(`${what} refused: ${describe(failure)}`);
    logActivity(`${what} refused: ${describe(failure)}`, "error");
  }
  refreshNow();
}

async function startRolling(event) {
  event.preventDefault();
  const error = $("rolling-error");
  error.textContent = "";
  const percent = Number($("batch-percent").value);
  if (!Number.isInteger(percent) || percent < 5 || percent > 100) {
    error.textContent = "The batch size is a whole percentage from 5 to 100.";
    $("batch-percent").focus();
    return;
  }
  const button = $("start-rolling");
  button.disabled = true;
  const api = session.api;
  const path = api.setPath(view.group, view.name);
  try {
    const patched = await api.call("PATCH", path, {
      properties: { upgradePolicy: { rollingUpgradePolicy: { maxBatchInstancePercent: percent } } },
    });
    await api.follow(patched, "Batch size");
    const started = await api.call("POST", `${path}/osRollingUpgrade`);
    logActivity(`Rolling upgrade started, batches of ${percent} %.`);
    follow(started, "Rolling upgrade");
  } catch (failure) {
    error.textContent = describe(failure);
    logActivity(`Rolling upgrade not started: ${describe(failure)}`, "error");
    button.disabled = false;
  }
  refreshNow();
}

async function cancelRolling() {
  const error = $("rolling-error");
  error.textContent = "";
  try {
    const api = session.api;
    const started = await api.call("POST", `${api.setPath(view.group, view.name)}/rollingUpgrades/cancel`);
    logActivity("Cancel requested: the upgrade stops after its current batch.");
    follow(started, "Cancel");
  } catch (failure) {
    error.textContent = describe(failure);
    logActivity(`Cancel refused: ${describe(failure)}`, "error");
  }
  refreshNow();
}

// ----------------------------------------------------------------------------- heat map interaction
function cells() {
  return [...$("heatmap").querySelectorAll(".cell")];
}

function selectInstance(id) {
  view.selectedId = id;
  for (const cell of cells()) {
    const mine = cell.dataset.instanceId === id;
    cell.classList.toggle("selected", mine);
    cell.setAttribute("aria-pressed", mine ? "true" : "false");
    cell.tabIndex = mine ? 0 : -1;
  }
  renderDetail();
}

function moveFocus(from, key) {
  const all = cells();
  const index = all.indexOf(from);
  const rowOf = (cell) => cell.closest("tr");
  let target = null;
  if (key === "ArrowRight") target = all[index + 1];
  else if (key === "ArrowLeft") target = all[index - 1];
  else if (key === "Home") target = all[0];
  else if (key === "End") target = all[all.length - 1];
  else if (key === "ArrowDown" || key === "ArrowUp") {
    const rows = [...new Set(all.map(rowOf))];
    const row = rows.indexOf(rowOf(from));
    const next = rows[row + (key === "ArrowDown" ? 1 : -1)];
    if (next) {
      const inRow = all.filter((c) => rowOf(c) === rowOf(from));
      const there = all.filter((c) => rowOf(c) === next);
      target = there[Math.min(inRow.indexOf(from), there.length - 1)];
    }
  }
  if (!target) return false;
  for (const cell of all) cell.tabIndex = cell === target ? 0 : -1;
  target.focus();
  return true;
}

function wireHeatmap() {
  const container = $("heatmap");
  container.addEventListener("click", (event) => {
    const cell = event.target.closest(".cell");
    if (cell) return selectInstance(cell.dataset.instanceId);
    const action = event.target.closest("[data-action='upgrade-ud']");
    if (action && !action.disabled) upgradeDomain(Number(action.dataset.ud));
  });
  container.addEventListener("mouseover", (event) => {
    const cell = event.target.closest(".cell");
    const id = cell ? cell.dataset.instanceId : null;
    if (id !== view.hoverId && id !== null) {
      view.hoverId = id;
      renderDetail();
    }
  });
  container.addEventListener("mouseleave", () => {
    view.hoverId = null;
    renderDetail();
  });
  container.addEventListener("focusin", (event) => {
    const cell = event.target.closest(".cell");
    if (cell && cell.dataset.instanceId !== view.selectedId) selectInstance(cell.dataset.instanceId);
  });
  container.addEventListener("keydown", (event) => {
    const cell = event.target.closest(".cell");
    if (cell && moveFocus(cell, event.key)) event.preventDefault();
  });
}

// ------------------------------------------------------------------------------------------- start
function main() {
  renderLegend();
  wireHeatmap();
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("refresh").addEventListener("click", () => {
    loadNavigation();
    refreshNow();
  });
  $("model-form").addEventListener("submit", applyModel);
  $("image-sku").addEventListener("change", () => loadVersions(null));
  $("rolling-form").addEventListener("submit", startRolling);
  $("cancel-rolling").addEventListener("click", cancelRolling);
  $("batch-percent").addEventListener("input", () => view.set && renderFacts());
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && session.api && view.name) refreshNow();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  const subscription = sessionStorage.getItem(SUBSCRIPTION_KEY) || DEFAULT_SUBSCRIPTION;
  if (token) startSession(new Api(token, subscription));
  else showLogin();
}

main();
