// The live event stream of every device you see, filtered by name prefix, and publishing an event.
import { post, stream } from "../api.js";
import { action, field, h, replace, time } from "../ui.js";

export async function render(root, { params }) {
  const prefix = params.get("prefix") || "";
  const filter = h("input", { type: "search", name: "prefix", value: prefix, placeholder: "e.g. temp or spark/" });
  const list = h("ol", { class: "events", id: "event-list", "aria-live": "polite" });
  const state = h("span", { class: "live" }, "connecting…");
  const name = h("input", { type: "text", name: "name", required: true, maxlength: 64 });
  const data = h("input", { type: "text", name: "data", maxlength: 622 });
  const isPrivate = h("input", { type: "checkbox", name: "private", checked: true });
  replace(
    root,
    h("h1", {}, "Events"),
    h("form", { class: "inline", role: "search", onsubmit: (e) => { e.preventDefault(); location.hash = `#/events?prefix=${encodeURIComponent(filter.value.trim())}`; } },
      field("Event name starts with", filter), h("button", { type: "submit" }, "Filter")),
    h("section", { "aria-labelledby": "publish-title" },
      h("h2", { id: "publish-title" }, "Publish"),
      h("form", { class: "inline", onsubmit: (e) => e.preventDefault() },
        field("Name", name), field("Data", data),
        h("div", { class: "field check" }, isPrivate, h("label", { for: (isPrivate.id = "publish-private") }, "Private (your devices only)")),
        action("Publish", async () => {
          await post("/v1/devices/events", { name: name.value, data: data.value, private: isPrivate.checked });
          return "published";
        }, { id: "publish" }))),
    h("section", { "aria-labelledby": "stream-title" },
      h("h2", { id: "stream-title" }, "Live"), h("p", {}, state, prefix ? ` · names starting with “${prefix}”` : ""), list),
  );
  const stop = stream(`/v1/fleet/events/${prefix.split("/").map(encodeURIComponent).join("/")}`, (event) => {
    list.prepend(h("li", {}, time(event.published_at), " ", h("code", { class: "name" }, event.name), " ",
      h("span", { class: "data" }, event.data ?? ""), " ",
      event.coreid && event.coreid !== "api" ? h("a", { href: `#/device/${event.coreid}` }, event.coreid) : h("span", { class: "muted" }, "api")));
    while (list.children.length > 200) list.lastChild.remove();
  }, (s) => { replace(state, s === "live" ? "● live" : "○ reconnecting…"); state.className = `live ${s}`; });
  return stop;
}
