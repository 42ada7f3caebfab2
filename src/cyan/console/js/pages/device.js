// One device: vitals, variables and functions, live events, key and key policy, connection attempts with the
// diagnosis of each failure, the doctor's report, updates and the audit trail.
import { call, get, post, stream } from "../api.js";
import { action, badge, confirmDialog, errorText, field, h, platform, replace, table, time } from "../ui.js";

const path = (id, rest = "") => `/v1/devices/${encodeURIComponent(id)}${rest}`;

function section(id, title) {
  const body = h("div", { class: "body" }, h("p", { class: "muted" }, "Loading…"));
  const element = h("section", { id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), body);
  return { element, body };
}

async function fill(part, load) {
  try {
    replace(part.body, await load());
  } catch (error) {
    replace(part.body, h("p", { class: "error" }, errorText(error)));
  }
}

function dl(pairs) {
  return h("dl", { class: "pairs" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export async function render(root, { arg }) {
  const device = await get(path(arg));
  const id = device.id;
  const vitals = section("vitals", "Status and vitals");
  const calls = section("calls", "Variables and functions");
  const events = section("events", "Live events");
  const keys = section("key", "Key");
  const attempts = section("attempts", "Connection attempts");
  const doctor = section("doctor", "Diagnosis");
  const updates = section("updates", "Firmware updates");
  const audit = section("audit", "Audit trail");
  const heading = h("h1", {}, device.name || device.id);
  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/devices" }, "Devices"), " / ", device.name || device.id),
    heading,
    h("div", { class: "grid" }, vitals.element, calls.element),
    h("div", { class: "grid" }, keys.element, events.element),
    doctor.element,
    attempts.element,
    h("div", { class: "grid" }, updates.element, audit.element),
  );

  async function loadVitals() {
    const d = await get(path(id));
    const status = d.status === "quarantined" ? "quarantined" : d.online ? "online" : "offline";
    return dl([
      ["Status", h("span", { id: "device-status" }, badge(status))],
      ["Id", h("code", {}, d.id)],
      ["Name", d.name || h("span", { class: "muted" }, "none")],
      ["Owner", d.owner || h("span", { class: "muted" }, "nobody")],
      ["Platform", platform(d.platform_id)],
      ["Device OS", d.system_firmware_version || h("span", { class: "muted" }, "not reported")],
      ["Product", `${d.product_id ?? ""}`],
      ["Last handshake", time(d.last_handshake_at)],
      ["Last heard", time(d.last_heard)],
      ["Last address", d.last_ip_address || ""],
      ["Key fingerprint", h("code", { class: "fingerprint" }, d.key_fingerprint || "none")],
      ["Notes", notesEditor(d)],
    ]);
  }

  function notesEditor(d) {
    const text = h("textarea", { name: "notes", rows: 3, maxlength: 1000 }, d.notes || "");
    return h("div", {}, field("Notes about this device", text),
      action("Save notes", async () => {
        const saved = await call("PUT", path(id), { json: { notes: text.value } });
        return saved.notes ? "saved" : "cleared";
      }, { "data-save": "notes" }));
  }

  async function loadCalls() {
    const d = await get(path(id));
    const variables = Object.entries(d.variables || {});
    const functions = d.functions || [];
    if (!d.online) return h("p", { class: "muted" }, "The device is offline: variables and functions answer only while it is connected.");
    return [
      h("h3", {}, "Variables"),
      variables.length
        ? h("ul", { class: "plain" }, variables.map(([name, type]) =>
            h("li", {}, h("code", {}, name), ` (${type}) `,
              action(`Read ${name}`, async () => String((await get(path(id, `/${encodeURIComponent(name)}`))).result), { "data-variable": name }))))
        : h("p", { class: "muted" }, "None."),
      h("h3", {}, "Functions"),
      functions.length
        ? h("ul", { class: "plain" }, functions.map((name) => {
            const input = h("input", { type: "text", maxlength: 622, placeholder: "argument", "data-function": name });
            return h("li", {}, field(`Argument for ${name}`, input),
              action(`Call ${name}`, async () => `returned ${(await post(path(id, `/${encodeURIComponent(name)}`), { arg: input.value })).return_value}`, { "data-call": name }));
          }))
        : h("p", { class: "muted" }, "None."),
    ];
  }

  async function loadKeys() {
    const k = await get(path(id, "/keys"));
    const policy = h("select", { name: "policy" },
      h("option", { value: "", selected: k.policy.scope === "*" }, `follow the fleet (${k.policy.scope === "*" ? k.policy.mode : "…"})`),
      h("option", { value: "strict", selected: k.policy.scope !== "*" && k.policy.mode === "strict" }, "strict: refuse a new key"),
      h("option", { value: "quarantine", selected: k.policy.scope !== "*" && k.policy.mode === "quarantine" }, "quarantine: connect with no access"));
    const minutes = h("select", { name: "rekey" }, [[15, "15 minutes"], [60, "1 hour"], [1440, "1 day"]].map(([m, l]) => h("option", { value: m }, l)));
    const window = k.rekey_window;
    return [
      dl([
        ["Registered key", h("code", { class: "fingerprint", id: "registered-fingerprint" }, k.key_fingerprint || "none")],
        ["Connected", k.connected ? "yes" : "no"],
        ["Quarantined", k.quarantined ? badge("quarantined") : "no"],
        ["Unproven attempts (24 h)", `${k.unproven_attempts.count}`],
        ["Re-key window", window ? [`open until `, time(window.until), ` (armed by ${window.armed_by})`] : "none"],
      ]),
      h("h3", {}, "Pending keys"),
      table(
        [
          { label: "Fingerprint", cell: (p) => h("code", { class: "fingerprint" }, p.fingerprint) },
          { label: "Seen", cell: (p) => [time(p.last_seen), ` ×${p.attempts}`] },
          { label: "From", cell: (p) => p.peer_address || "" },
          { label: "Decide", cell: (p) => [
            action("Approve", () => decide("approve", p.fingerprint), { class: "primary", "data-approve": p.fingerprint }),
            action("Reject", () => decide("reject", p.fingerprint), { "data-reject": p.fingerprint }),
          ] },
        ],
        k.pending_keys,
        { empty: "No pending key." },
      ),
      h("h3", {}, "Key policy"),
      h("div", { class: "inline" }, field("This device's policy", policy),
        action("Set policy", async () => {
          if (policy.value) await call("PUT", path(id, "/keys/policy"), { json: { mode: policy.value } });
          else await call("DELETE", path(id, "/keys/policy"));
          await fill(keys, loadKeys);
        })),
      h("div", { class: "inline" }, field("Re-key window for", minutes),
        action("Arm re-key window", async () => {
          await post(path(id, "/keys/rekey"), { seconds: Number(minutes.value) * 60 });
          await fill(keys, loadKeys);
        }),
        window ? action("Close window", async () => { await call("DELETE", path(id, "/keys/rekey")); await fill(keys, loadKeys); }) : null),
    ];
  }

  async function decide(what, fingerprint) {
    const ok = await confirmDialog(
      what === "approve" ? "Approve this key?" : "Reject this key?",
      [
        h("p", {}, what === "approve"
          ? "The device will be allowed to connect with this key, in place of its registered one. Check that it is the key the device holds:"
          : "The key is forgotten; a quarantined session with it is closed:"),
        h("p", {}, h("code", { class: "fingerprint", id: "confirm-fingerprint" }, fingerprint)),
      ],
      what === "approve" ? "Approve this fingerprint" : "Reject this fingerprint",
    );
    if (!ok) return "not done";
    // The fingerprint shown is the one sent: if another key appeared meanwhile, the server answers 409.
    await post(path(id, `/keys/${what}`), { fingerprint });
    await Promise.all([fill(keys, loadKeys), fill(audit, loadAudit), fill(vitals, loadVitals)]);
    return what === "approve" ? "approved" : "rejected";
  }

  async function loadAttempts() {
    const body = await get(path(id, "/attempts"), { limit: 100 });
    // A device in a loop fails the same way again and again: one entry per run of alike attempts, counted.
    const runs = [];
    for (const a of body.attempts) {
      const last = runs[runs.length - 1];
      const same = last && last.a.outcome === a.outcome && last.a.step === a.step && last.a.reason === a.reason
        && last.a.presented_fingerprint === a.presented_fingerprint && a.outcome === "failed";
      if (same) { last.count += 1; last.first = a.started_at; } else runs.push({ a, count: 1, first: a.started_at });
    }
    if (!runs.length) return h("p", { class: "muted" }, "No attempt recorded.");
    return [
      h("p", { class: "muted" }, `The last ${body.attempts.length} attempt(s), newest first.`),
      h("ol", { class: "timeline", id: "attempt-list" }, runs.map(({ a, count, first }) =>
        h("li", { class: a.outcome },
          h("div", { class: "when" }, time(a.started_at), " ", badge(a.outcome === "connected" ? "connected" : "failed"),
            count > 1 ? h("span", { class: "muted" }, ` ×${count} since `, time(first)) : null),
          a.outcome === "failed"
            ? h("div", {},
                dl([
                  ["Step", h("code", { class: "step" }, a.step)],
                  ["Reason", h("code", { class: "reason" }, a.reason || "")],
                  ["Cause", a.entry || a.cause ? h("span", { class: "cause" }, [a.entry, a.cause].filter(Boolean).join(" · ")) : "unknown"],
                  a.fix ? ["Fix", h("span", { class: "fix" }, a.fix)] : null,
                  a.presented_fingerprint && a.presented_fingerprint !== a.stored_fingerprint
                    ? ["Presented key", h("code", { class: "fingerprint" }, a.presented_fingerprint)] : null,
                ]),
                h("p", { class: "said" }, a.said))
            : h("p", { class: "said" }, a.said, a.duration !== null ? ` (${a.duration.toFixed(2)} s)` : ""),
          h("small", { class: "muted" }, a.peer_address)))),
    ];
  }

  async function loadDoctor() {
    const report = await get(path(id, "/doctor"));
    return [
      dl([["Status", badge(report.status)], ["Attempts (7 days)", `${report.counts.attempts}: ${report.counts.connected} connected, ${report.counts.failed} failed`]]),
      h("ul", { class: "said" }, report.said.map((s) => h("li", {}, s))),
      report.diagnosis.map((f) => h("div", { class: "finding" },
        h("h3", {}, [f.entry, f.title].filter(Boolean).join(": ")),
        f.cause_title ? h("p", {}, h("strong", {}, "Cause: "), f.cause_title, f.confidence ? ` (${f.confidence})` : "") : null,
        f.fix ? h("p", {}, h("strong", {}, "Fix: "), f.fix) : null)),
      report.todo.length ? [h("h3", {}, "What to do"), h("ol", {}, report.todo.map((t) => h("li", {}, t)))] : null,
    ];
  }

  async function loadUpdates() {
    const jobs = await get(path(id, "/updates"));
    return table(
      [
        { label: "Job", cell: (j) => `#${j.id}` },
        { label: "State", cell: (j) => badge(j.state) },
        { label: "Progress", cell: (j) => h("progress", { max: 1, value: j.progress, "aria-label": `job ${j.id} progress` }) },
        { label: "Firmware", cell: (j) => h("code", {}, j.firmware.slice(0, 12)) },
        { label: "Outcome", cell: (j) => [j.reason ? h("code", {}, j.reason) : "", " ", j.detail || ""] },
        { label: "Started", cell: (j) => time(j.created_at) },
      ],
      jobs,
      { empty: "No update yet." },
    );
  }

  async function loadAudit() {
    const entries = await get("/v1/audit", { device: id, limit: 50 });
    return table(
      [
        { label: "When", cell: (e) => time(e.at) },
        { label: "What", cell: (e) => h("code", {}, e.action) },
        { label: "Who", cell: (e) => e.actor },
        { label: "Detail", cell: (e) => [e.detail || "", e.new_fingerprint ? h("code", { class: "fingerprint" }, ` → ${e.new_fingerprint}`) : ""] },
      ],
      entries,
      { empty: "Nothing recorded." },
    );
  }

  const live = h("ol", { class: "events", id: "device-events", "aria-live": "polite" });
  const liveState = h("span", { class: "live" }, "connecting…");
  replace(events.body, h("p", {}, liveState), live);
  await Promise.all([fill(vitals, loadVitals), fill(calls, loadCalls), fill(keys, loadKeys), fill(attempts, loadAttempts),
    fill(doctor, loadDoctor), fill(updates, loadUpdates), fill(audit, loadAudit)]);

  const stop = stream(path(id, "/events"), (event) => {
    live.prepend(h("li", {}, time(event.published_at), " ", h("code", { class: "name" }, event.name), " ", h("span", { class: "data" }, event.data ?? "")));
    while (live.children.length > 100) live.lastChild.remove();
    if (event.name === "spark/status") {
      // Came or went: what it can be asked, and how it connected, changed.
      setTimeout(() => Promise.all([fill(vitals, loadVitals), fill(calls, loadCalls), fill(keys, loadKeys), fill(attempts, loadAttempts), fill(updates, loadUpdates)]), 300);
    }
  }, (s) => { replace(liveState, s === "live" ? "● live" : "○ reconnecting…"); liveState.className = `live ${s}`; });
  // Failed attempts publish no event: read them again now and then.
  const timer = setInterval(() => { fill(attempts, loadAttempts); fill(keys, loadKeys); fill(updates, loadUpdates); }, 10000);
  return () => { stop(); clearInterval(timer); };
}
