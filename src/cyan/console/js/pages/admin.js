// Accounts and tokens (admins: everyone's; users: their own), and the server key devices need.
import { call, get, post } from "../api.js";
import { action, confirmDialog, errorText, field, h, replace, table, time } from "../ui.js";

export async function render(root, { session }) {
  const admin = session.role === "admin";
  const users = h("section", { "aria-labelledby": "users-title" });
  const tokens = h("section", { "aria-labelledby": "tokens-title" });
  const key = h("section", { "aria-labelledby": "key-title" });
  replace(root, h("h1", {}, "Admin"), key, admin ? users : null, tokens);
  let tokenUser = session.username;

  async function loadUsers() {
    const list = await get("/v1/users");
    const username = h("input", { type: "email", name: "username", required: true, autocomplete: "off" });
    const password = h("input", { type: "password", name: "password", minlength: 8, required: true, autocomplete: "new-password" });
    const role = h("select", { name: "role" }, h("option", { value: "user" }, "user"), h("option", { value: "admin" }, "admin"));
    replace(
      users,
      h("h2", { id: "users-title" }, "Accounts"),
      table(
        [
          { label: "Username", cell: (u) => u.username },
          { label: "Role", cell: (u) => u.role },
          { label: "Created", cell: (u) => time(u.created_at) },
          { label: "Actions", cell: (u) => [
            action("Tokens", async () => { tokenUser = u.username; await loadTokens(); return "shown below"; }),
            action(u.role === "admin" ? "Make user" : "Make admin", async () => {
              await call("PUT", `/v1/users/${encodeURIComponent(u.username)}`, { json: { role: u.role === "admin" ? "user" : "admin" } });
              await loadUsers();
            }),
            u.username === session.username ? null : action("Remove", async () => {
              if (!(await confirmDialog(`Remove ${u.username}?`, h("p", {}, "Their tokens are revoked and their devices released."), "Remove the account"))) return "not done";
              await call("DELETE", `/v1/users/${encodeURIComponent(u.username)}`);
              await loadUsers();
            }),
          ] },
        ],
        list,
      ),
      h("h3", {}, "New account"),
      h("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, field("Username (e-mail)", username), field("Password", password), field("Role", role),
        action("Create account", async () => {
          await post("/v1/users", { username: username.value.trim(), password: password.value, role: role.value });
          await loadUsers();
          return "created";
        })),
    );
  }

  async function loadTokens() {
    const query = admin && tokenUser !== session.username ? { username: tokenUser } : {};
    const list = await get("/v1/access_tokens", query);
    const shown = h("output", { class: "secret", "aria-live": "polite" });
    const lifetime = h("select", { name: "expires_in" }, [[86400, "1 day"], [2592000, "30 days"], [7776000, "90 days"], [0, "never"]].map(([v, l]) => h("option", { value: v, selected: v === 7776000 }, l)));
    replace(
      tokens,
      h("h2", { id: "tokens-title" }, `Access tokens of ${tokenUser}`),
      h("p", { class: "muted" }, "Tokens are kept as their SHA-256 only: a token is shown once, when it is made."),
      table(
        [
          { label: "Hash", cell: (t) => h("code", {}, t.hash.slice(0, 12)) },
          { label: "Client", cell: (t) => t.client },
          { label: "Created", cell: (t) => time(t.created_at) },
          { label: "Expires", cell: (t) => (t.expires_at ? time(t.expires_at) : "never") },
          { label: "", cell: (t) => action("Revoke", async () => {
            await call("DELETE", `/v1/users/${encodeURIComponent(tokenUser)}/tokens/${t.hash}`);
            await loadTokens();
          }) },
        ],
        list,
      ),
      admin
        ? h("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, field("Lifetime", lifetime),
            action(`Create a token for ${tokenUser}`, async () => {
              const made = await post(`/v1/users/${encodeURIComponent(tokenUser)}/tokens`, { expires_in: Number(lifetime.value) });
              await loadTokens();
              replace(tokens.querySelector("output.secret") || shown, "New token (copy it now, it is not shown again): ", h("code", {}, made.access_token));
              return "created";
            }), shown)
        : null,
    );
  }

  async function loadKey() {
    const info = await get("/v1/server/key");
    const link = h("span");
    replace(
      key,
      h("h2", { id: "key-title" }, "Server key"),
      h("p", {}, "Every device must hold this server key (and this server's address) to connect."),
      h("dl", { class: "pairs" }, h("dt", {}, "Fingerprint"), h("dd", {}, h("code", { class: "fingerprint", id: "server-fingerprint" }, info.fingerprint || "unknown"))),
      info.key_file_url
        ? [action(`Download ${info.key_file}`, async () => {
            const blob = await call("GET", info.key_file_url);
            const url = URL.createObjectURL(blob);
            replace(link, h("a", { href: url, download: info.key_file }, `Save ${info.key_file}`));
            link.querySelector("a").click();
            return "ready";
          }), link,
          h("p", { class: "muted" }, "Write it over USB (DFU mode): cyan keys load FILE, or particle keys server FILE.")]
        : h("p", { class: "muted" }, "The key file is written once the device port is open."),
    );
  }

  await Promise.all([loadKey(), admin ? loadUsers() : null, loadTokens()].map((p) => p && p.catch((e) => console.error(errorText(e)))));
}
