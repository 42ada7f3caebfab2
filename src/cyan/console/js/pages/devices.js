// The device list: searched, filtered, sorted and paged by the server (GET /v1/fleet/devices), so a fleet of
// 10,000 costs one page. The filters live in the URL: a reload or the back button keeps them.
import { get, stream } from "../api.js";
import { GEN2_PLATFORMS, badge, debounce, field, h, platform, replace, table, time } from "../ui.js";

const FILTERS = ["q", "status", "group", "platform_id", "product_version", "system_version", "seen_after", "seen_before", "owner"];
const COLUMNS = [
  ["name", "Device"],
  ["online", "Status"],
  ["platform_id", "Platform"],
  ["product_version", "Firmware"],
  ["system_version", "Device OS"],
  ["last_heard", "Last seen"],
];

function select(name, options, value) {
  return h("select", { name }, options.map(([v, label]) => h("option", { value: v, selected: String(v) === value }, label)));
}

export async function render(root, { params, session }) {
  const admin = session.role === "admin";
  const state = Object.fromEntries(FILTERS.map((n) => [n, params.get(n) || ""]));
  const sort = params.get("sort") || "id";
  const order = params.get("order") || "asc";
  const limit = Number(params.get("limit") || 50);
  const offset = Number(params.get("offset") || 0);

  const groups = await get("/v1/fleet/groups").catch(() => ({}));
  const local = (iso) => (iso ? iso.slice(0, 16) : "");
  const controls = {
    q: h("input", { name: "q", type: "search", value: state.q, placeholder: "id or name", maxlength: 64 }),
    status: select("status", [["", "any"], ["online", "online"], ["offline", "offline"], ["failing", "failing now"], ["pending", "pending key"]], state.status),
    group: select("group", [["", "any"], ...Object.entries(groups).map(([g, n]) => [g, `${g} (${n})`])], state.group),
    platform_id: select("platform_id", [["", "any"], ...GEN2_PLATFORMS.map(([id, name]) => [id, name])], state.platform_id),
    product_version: h("input", { name: "product_version", type: "number", min: 0, value: state.product_version, inputmode: "numeric" }),
    system_version: h("input", { name: "system_version", type: "number", min: 0, value: state.system_version, inputmode: "numeric", placeholder: "e.g. 3103" }),
    seen_after: h("input", { name: "seen_after", type: "datetime-local", value: local(state.seen_after) }),
    seen_before: h("input", { name: "seen_before", type: "datetime-local", value: local(state.seen_before) }),
    owner: admin ? h("input", { name: "owner", type: "text", value: state.owner, placeholder: "any account" }) : null,
  };
  const go = (changes) => {
    const next = new URLSearchParams();
    const merged = { ...state, sort, order, limit, offset: 0, ...changes };
    for (const [name, value] of Object.entries(merged)) {
      if (value !== "" && value !== null && value !== undefined && !(name === "offset" && !value)) next.set(name, value);
    }
    location.hash = `#/devices?${next}`;
  };
  const read = () => {
    const values = {};
    for (const [name, control] of Object.entries(controls)) {
      if (!control) continue;
      let value = control.value.trim();
      if (value && control.type === "datetime-local") value = new Date(value).toISOString();
      values[name] = value;
    }
    return values;
  };
  const form = h(
    "form",
    { class: "filters", role: "search", onsubmit: (e) => { e.preventDefault(); go(read()); } },
    field("Search", controls.q),
    field("Status", controls.status),
    field("Group", controls.group),
    field("Platform", controls.platform_id),
    field("Firmware (product version)", controls.product_version),
    field("Device OS (system version)", controls.system_version),
    field("Seen after", controls.seen_after),
    field("Seen before", controls.seen_before),
    controls.owner ? field("Owner", controls.owner) : null,
    h("div", { class: "buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", onclick: () => { location.hash = "#/devices"; } }, "Clear")),
  );
  for (const name of ["status", "group", "platform_id"]) controls[name].addEventListener("change", () => go(read()));

  const results = h("div", { id: "device-results", "aria-live": "polite" });
  replace(root, h("h1", {}, "Devices"), form, results);

  async function load() {
    const query = { ...state, sort, order, limit, offset };
    const started = performance.now();
    const page = await get("/v1/fleet/devices", query);
    const took = Math.round(performance.now() - started);
    const header = (key, label) => {
      const active = sort === key;
      const next = active && order === "asc" ? "desc" : "asc";
      return h("button", {
        type: "button", class: "sort", "aria-label": `Sort by ${label}${active ? ` (now ${order === "asc" ? "ascending" : "descending"})` : ""}`,
        onclick: () => go({ ...read(), sort: key, order: next }),
      }, label, active ? (order === "asc" ? " ▲" : " ▼") : "");
    };
    const columns = [
      { label: header("name", "Device"), cell: (d) => h("a", { href: `#/device/${d.id}` }, d.name || d.id, d.name ? h("small", { class: "id" }, d.id) : null) },
      { label: header("online", "Status"), cell: (d) => badge(d.status) },
      { label: header("platform_id", "Platform"), cell: (d) => platform(d.platform_id) },
      { label: header("product_version", "Firmware"), cell: (d) => d.product_version ?? "" },
      { label: header("system_version", "Device OS"), cell: (d) => d.system_version ?? "" },
      { label: header("last_heard", "Last seen"), cell: (d) => time(d.last_heard) },
      { label: "Last attempt", cell: (d) => (d.last_attempt && d.last_attempt.outcome === "failed" ? h("code", {}, `${d.last_attempt.step}: ${d.last_attempt.reason}`) : "") },
    ];
    if (admin) columns.push({ label: "Owner", cell: (d) => d.owner || h("span", { class: "muted" }, "nobody") });
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.devices.length;
    const pager = h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      h("button", { type: "button", disabled: offset === 0, onclick: () => go({ ...read(), offset: Math.max(0, offset - limit) }) }, "← Previous"),
      h("span", { id: "device-range" }, `${first}–${last} of ${page.total.toLocaleString("en")}`),
      h("button", { type: "button", disabled: last >= page.total, onclick: () => go({ ...read(), offset: offset + limit }) }, "Next →"),
      field("Per page", select("limit", [[25, "25"], [50, "50"], [100, "100"], [250, "250"]], String(limit))),
      h("small", { class: "muted" }, `${took} ms`),
    );
    pager.querySelector("select").addEventListener("change", (e) => go({ ...read(), limit: e.target.value }));
    replace(results, table(columns, page.devices, { empty: "No device matches." }), pager);
  }

  await load();
  const again = debounce(() => load().catch(() => {}), 1000);
  const stop = stream("/v1/fleet/events/spark/status", again);
  return stop;
}
