// Keys waiting for a decision, where they came from, and the re-key windows armed.
import { call, get, post } from "../api.js";
import { action, confirmDialog, h, replace, table, time } from "../ui.js";

export async function render(root) {
  const pending = h("section", { "aria-labelledby": "pending-title" });
  const windows = h("section", { "aria-labelledby": "windows-title" });
  replace(root, h("h1", {}, "Keys"), pending, windows);

  async function decide(what, p) {
    const ok = await confirmDialog(
      `${what === "approve" ? "Approve" : "Reject"} the key of ${p.device_id}?`,
      [
        h("p", {}, what === "approve" ? "Check that this is the key the device holds (cyan keys inspect shows it over USB):" : "The key is forgotten:"),
        h("p", {}, h("code", { class: "fingerprint", id: "confirm-fingerprint" }, p.fingerprint)),
        p.registered_fingerprint ? h("p", { class: "muted" }, "Registered now: ", h("code", { class: "fingerprint" }, p.registered_fingerprint)) : null,
      ],
      what === "approve" ? "Approve this fingerprint" : "Reject this fingerprint",
    );
    if (!ok) return "not done";
    await post(`/v1/devices/${p.device_id}/keys/${what}`, { fingerprint: p.fingerprint });
    await load();
    return what === "approve" ? "approved" : "rejected";
  }

  async function load() {
    const [keys, armed] = await Promise.all([get("/v1/keys/pending"), get("/v1/keys/rekey")]);
    replace(
      pending,
      h("h2", { id: "pending-title" }, `Pending keys (${keys.length})`),
      h("p", { class: "muted" }, "Keys a registered device presented that are not its registered key: it lost its key, or someone else uses its id."),
      table(
        [
          { label: "Device", cell: (p) => h("a", { href: `#/device/${p.device_id}` }, p.device_id) },
          { label: "Fingerprint", cell: (p) => h("code", { class: "fingerprint" }, p.fingerprint) },
          { label: "From", cell: (p) => p.peer_address || "" },
          { label: "Seen", cell: (p) => [time(p.first_seen), " – ", time(p.last_seen), ` (${p.attempts}×)`] },
          { label: "Decide", cell: (p) => [
            action("Approve", () => decide("approve", p), { class: "primary", "data-approve": p.fingerprint }),
            action("Reject", () => decide("reject", p)),
            action("Quarantine", async () => {
              await call("PUT", `/v1/devices/${p.device_id}/keys/policy`, { json: { mode: "quarantine" } });
              return "policy: quarantine (it may connect, with no access, until decided)";
            }),
          ] },
        ],
        keys,
        { empty: "No key is waiting for a decision." },
      ),
    );
    const now = Date.now();
    replace(
      windows,
      h("h2", { id: "windows-title" }, "Re-key windows"),
      table(
        [
          { label: "Device", cell: (w) => h("a", { href: `#/device/${w.device_id}` }, w.device_id) },
          { label: "Until", cell: (w) => [time(w.until), Date.parse(w.until) <= now ? " (ended)" : ""] },
          { label: "Armed by", cell: (w) => [w.armed_by, " ", time(w.armed_at)] },
          { label: "Accepted", cell: (w) => (w.accepted_fingerprint ? h("code", { class: "fingerprint" }, w.accepted_fingerprint) : "no key yet") },
        ],
        armed,
        { empty: "No re-key window is armed. Arm one from a device's page." },
      ),
    );
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), 10000);
  return () => clearInterval(timer);
}
