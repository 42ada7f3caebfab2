// The fleet at a glance: counts that follow devices as they come and go, devices failing now, alerts.
import { get, stream } from "../api.js";
import { badge, debounce, h, replace, table, time } from "../ui.js";

function card(id, label, value, href, tone = "") {
  return h(
    "a",
    { class: `card ${tone}`, href, id: `card-${id}` },
    h("span", { class: "count", id: `count-${id}` }, String(value)),
    h("span", { class: "label" }, label),
  );
}

export async function render(root, { session }) {
  const cards = h("div", { class: "cards", "aria-label": "Fleet counts" });
  const failing = h("section", { "aria-labelledby": "failing-title" });
  const alerts = h("section", { "aria-labelledby": "alerts-title" });
  const state = h("span", { class: "live", id: "live-state" }, "connecting…");
  const stamp = h("span", { class: "muted" });
  replace(
    root,
    h("div", { class: "title" }, h("h1", {}, "Fleet"), h("p", {}, state, " ", stamp)),
    cards,
    failing,
    alerts,
  );

  async function refresh() {
    const fleet = await get("/v1/fleet");
    replace(
      cards,
      card("devices", "devices", fleet.devices, "#/devices"),
      card("online", "online", fleet.online, "#/devices?status=online", "ok"),
      card("offline", "offline", fleet.offline, "#/devices?status=offline"),
      card("failing", `failing now (${fleet.failing_window_minutes} min)`, fleet.failing, "#/devices?status=failing", fleet.failing ? "bad" : ""),
      card("pending", "with pending keys", fleet.pending_devices, "#/keys", fleet.pending_devices ? "warn" : ""),
      card("quarantined", "quarantined", fleet.quarantined, "#/keys", fleet.quarantined ? "warn" : ""),
      card("rekey", "re-key windows open", fleet.rekey_windows, "#/keys"),
      fleet.unidentified_failures === null
        ? null
        : card("unidentified", "failures naming no device", fleet.unidentified_failures, "#/fleet", fleet.unidentified_failures ? "warn" : ""),
    );
    replace(
      failing,
      h("h2", { id: "failing-title" }, "Failing to connect now"),
      table(
        [
          { label: "Device", cell: (d) => h("a", { href: `#/device/${d.id}` }, d.name || d.id) },
          { label: "Status", cell: (d) => badge(d.status) },
          { label: "Step", cell: (d) => (d.last_attempt ? d.last_attempt.step : "") },
          { label: "Reason", cell: (d) => (d.last_attempt ? h("code", {}, d.last_attempt.reason || "") : "") },
          { label: "When", cell: (d) => time(d.last_attempt && d.last_attempt.started_at) },
        ],
        fleet.failing_devices,
        { empty: "No device of yours is failing to connect." },
      ),
    );
    replace(
      alerts,
      h("h2", { id: "alerts-title" }, "Alerts"),
      h("p", { class: "muted" }, "Since this server started: impersonation attempts, handshake loops, key changes."),
      table(
        [
          { label: "When", cell: (a) => time(a.at) },
          { label: "Kind", cell: (a) => h("code", {}, a.kind) },
          { label: "Device", cell: (a) => (a.device_id ? h("a", { href: `#/device/${a.device_id}` }, a.device_id) : "") },
          { label: "What", cell: (a) => a.summary },
        ],
        fleet.alerts,
        { empty: "No alerts." },
      ),
    );
    replace(stamp, "updated ", time(fleet.at));
  }

  await refresh();
  // Devices coming and going publish spark/status: count again (debounced: a whole fleet may reconnect at once).
  const again = debounce(() => refresh().catch(() => {}), 250);
  const stop = stream("/v1/fleet/events/spark/status", again, (s) => {
    replace(state, s === "live" ? "● live" : "○ reconnecting…");
    state.className = `live ${s}`;
    if (s === "live") again();
  });
  // Failures do not publish events: look again now and then while the page is open.
  const timer = setInterval(again, 15000);
  return () => {
    stop();
    clearInterval(timer);
  };
}
