// The console: a sign-in form, then one page per hash route (#/fleet, #/devices, #/device/ID, ...).
import { session, signIn, signOut } from "./api.js";
import { errorText, field, h, notice, replace } from "./ui.js";
import * as fleet from "./pages/fleet.js";
import * as devices from "./pages/devices.js";
import * as device from "./pages/device.js";
import * as keys from "./pages/keys.js";
import * as updates from "./pages/updates.js";
import * as events from "./pages/events.js";
import * as admin from "./pages/admin.js";

const PAGES = { fleet, devices, device, keys, updates, events, admin };
const main = document.getElementById("main");
let cleanup = null;

function route() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: name || "fleet", arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(query) };
}

function showChrome(current) {
  document.getElementById("nav").hidden = !current;
  document.getElementById("who").hidden = !current;
  if (current) replace(document.getElementById("who-name"), `${current.username} (${current.role})`);
}

async function render() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const current = session.get();
  showChrome(current);
  if (!current) {
    renderSignIn();
    return;
  }
  const { name, arg, params } = route();
  const page = PAGES[name];
  for (const link of document.querySelectorAll("#nav a")) {
    const active = link.getAttribute("href") === `#/${name === "device" ? "devices" : name}`;
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/fleet" }, "Go to the fleet")));
    return;
  }
  replace(main, h("p", { class: "muted" }, "Loading…"));
  try {
    cleanup = (await page.render(main, { arg, params, session: current })) || null;
  } catch (error) {
    replace(main, h("h1", {}, "Could not load this page"), h("p", { class: "error" }, errorText(error)));
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    document.title = `${heading.textContent} · Cyan`;
  }
}

function renderSignIn(message) {
  const username = h("input", { name: "username", type: "text", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h(
    "form",
    {
      class: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        replace(error, "");
        try {
          await signIn(username.value.trim(), password.value);
          notice("");
          if (!location.hash || location.hash === "#/") location.hash = "#/fleet";
          else render();
        } catch (failure) {
          replace(error, failure.status === 400 ? "Wrong username or password." : errorText(failure));
          password.select();
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "The same account as the API and the Particle CLI (cyan users add)."),
    field("Username", username),
    field("Password", password),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  replace(main, form);
  username.focus();
}

window.addEventListener("cyan:signed-out", (event) => {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  showChrome(null);
  renderSignIn(event.detail);
});
window.addEventListener("hashchange", () => {
  render().then(() => {
    const heading = main.querySelector("h1");
    if (heading) heading.focus();
  });
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
render();
