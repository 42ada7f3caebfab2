// Firmware: upload a binary (checked as a device would check it), roll it out, follow every device's progress.
import { call, get, post } from "../api.js";
import { action, badge, errorText, field, h, replace, table, time } from "../ui.js";

export async function render(root, { params }) {
  const file = h("input", { type: "file", name: "file", accept: ".bin,application/octet-stream" });
  const uploaded = h("div", { id: "firmware-info", "aria-live": "polite" });
  const target = h("select", { name: "target" },
    h("option", { value: "devices" }, "devices (ids or names)"), h("option", { value: "group" }, "a group"), h("option", { value: "all" }, "all my devices"));
  const names = h("input", { type: "text", name: "devices", placeholder: "kitchen garage …" });
  const concurrency = h("input", { type: "number", name: "concurrency", min: 1, max: 10000, value: 20 });
  const progress = h("section", { id: "rollout", "aria-labelledby": "rollout-title", "aria-live": "polite" });
  const recent = h("section", { "aria-labelledby": "recent-title" });
  let firmware = null;
  let rollout = params.get("rollout");
  let timer = null;

  const start = h("button", { type: "submit", class: "primary", disabled: true }, "Start the update");
  const message = h("p", { class: "error", role: "alert" });
  replace(
    root,
    h("h1", {}, "Updates"),
    h("form", { class: "stack", onsubmit: (e) => e.preventDefault() },
      h("h2", {}, "1. Firmware"),
      field("Firmware binary", file, "Checked as the device checks it (module header, CRC, platform) before anything is sent."),
      action("Upload", async () => {
        if (!file.files.length) throw new Error("choose a file first");
        const body = new FormData();
        body.append("file", file.files[0]);
        firmware = await call("POST", "/v1/firmware", { body });
        replace(uploaded, h("p", {}, "Uploaded ", h("code", {}, firmware.sha256.slice(0, 16)), ` · ${firmware.platform} · ${firmware.module_function} v${firmware.module_version} · ${firmware.size} bytes`));
        start.disabled = false;
        return "checked and kept";
      }, { id: "upload" }),
      uploaded),
    h("form", { class: "stack", onsubmit: async (e) => {
        e.preventDefault();
        replace(message, "");
        const body = { firmware: firmware.sha256, concurrency: Number(concurrency.value) };
        if (target.value === "all") body.all = true;
        else if (target.value === "group") body.group = names.value.trim();
        else body.devices = names.value.split(/[\s,]+/).filter(Boolean);
        try {
          const started = await post("/v1/updates", body);
          rollout = started.rollout || `job:${started.jobs[0].id}`;
          follow();
        } catch (error) {
          replace(message, errorText(error));
        }
      } },
      h("h2", {}, "2. Devices"),
      h("div", { class: "inline" }, field("Update", target), field("Which", names), field("At most at once", concurrency)),
      start, message),
    progress,
    recent,
  );

  async function jobs() {
    if (rollout.startsWith("job:")) return [await get(`/v1/updates/${rollout.slice(4)}`)];
    return get("/v1/updates", { rollout, limit: 10000 });
  }

  async function show() {
    const list = await jobs();
    const done = list.filter((j) => j.state === "succeeded").length;
    const failed = list.filter((j) => j.state === "failed").length;
    const finished = done + failed === list.length;
    const controls = rollout.startsWith("job:")
      ? ["pause", "resume", "cancel"].map((a) => action(a[0].toUpperCase() + a.slice(1), async () => { await post(`/v1/updates/${rollout.slice(4)}/${a}`); await show(); }))
      : ["pause", "resume", "cancel"].map((a) => action(`${a[0].toUpperCase() + a.slice(1)} rollout`, async () => {
          const r = await post(`/v1/rollouts/${rollout}/${a}`);
          await show();
          return `${r.changed.length} job(s) ${a}d${r.skipped.length ? `, ${r.skipped.length} left as they were` : ""}`;
        }));
    replace(
      progress,
      h("h2", { id: "rollout-title" }, "Progress"),
      h("p", { id: "rollout-summary" }, `${done} of ${list.length} succeeded, ${failed} failed${finished ? " — finished" : ""}`),
      finished ? null : h("div", { class: "buttons" }, controls),
      table(
        [
          { label: "Device", cell: (j) => h("a", { href: `#/device/${j.device_id}` }, j.device_id) },
          { label: "State", cell: (j) => badge(j.state) },
          { label: "Progress", cell: (j) => [h("progress", { max: 1, value: j.progress, "aria-label": `${j.device_id} progress` }), ` ${Math.round(j.progress * 100)}%`] },
          { label: "Attempts", cell: (j) => `${j.attempts}/${j.max_attempts}` },
          { label: "Outcome", cell: (j) => [j.reason ? h("code", {}, j.reason) : "", " ", j.detail || "", j.verification ? ` (verified by ${j.verification})` : ""] },
        ],
        list,
      ),
    );
    return finished;
  }

  function follow() {
    clearTimeout(timer);
    const tick = async () => {
      let finished = false;
      try {
        finished = await show();
      } catch (error) {
        replace(progress, h("p", { class: "error" }, errorText(error)));
      }
      // Progress is read, not pushed: once a second while anything is unfinished.
      if (!finished) timer = setTimeout(tick, 1000);
      else loadRecent();
    };
    tick();
  }

  async function loadRecent() {
    const list = await get("/v1/updates", { limit: 50 });
    replace(
      recent,
      h("h2", { id: "recent-title" }, "Recent update jobs"),
      table(
        [
          { label: "Job", cell: (j) => `#${j.id}` },
          { label: "Device", cell: (j) => h("a", { href: `#/device/${j.device_id}` }, j.device_id) },
          { label: "State", cell: (j) => badge(j.state) },
          { label: "Rollout", cell: (j) => (j.rollout ? h("a", { href: `#/updates?rollout=${j.rollout}` }, j.rollout.slice(0, 8)) : "") },
          { label: "Outcome", cell: (j) => (j.reason ? h("code", {}, j.reason) : "") },
          { label: "Created", cell: (j) => [time(j.created_at), " by ", j.created_by || ""] },
        ],
        list,
        { empty: "No update yet." },
      ),
    );
  }

  if (rollout) follow();
  await loadRecent();
  return () => clearTimeout(timer);
}
