// fleetplane console: the small core every page uses (API calls, DOM helpers, hash router,
// live updates over server-sent events). No framework, no build step.
"use strict";

const FP = (() => {
  const COLOURS = { green: "#2e9e44", orange: "#f08c00", red: "#d63333", grey: "#9aa0a6" };
  const pages = {};
  let current = null; // { name, page, arg }

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // Every console call: the session cookie goes along (same origin); writes carry the
  // CSRF token. A 401 means the session ended: back to the login page.
  async function api(path, options = {}) {
    const init = {
      method: options.method || "GET",
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf() },
    };
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch("/console/api" + path, init);
    if (response.status === 401) {
      window.location.assign("/console/login");
      throw new Error("session ended");
    }
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.message || response.statusText);
    }
    return body;
  }

  // h("div", {class: "x", onclick: fn}, "text", child): text is always text, never HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "style") Object.assign(el.style, value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function badge(colour, score) {
    const text = score === null || score === undefined ? "no data" : String(score);
    return h("span", { class: "badge " + colour, "data-colour": colour }, text);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : value.toFixed(1) + " %";
  }

  function ago(stamp) {
    if (!stamp) return "never";
    const seconds = Math.max(0, (Date.now() - Date.parse(stamp)) / 1000);
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 129600) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function labels(map) {
    const entries = Object.entries(map || {});
    if (!entries.length) return h("span", { class: "muted" }, "none");
    return h("span", { class: "labels" }, entries.map(([k, v]) => h("code", { class: "label" }, k + "=" + v)));
  }

  function table(headers, rows, attrs) {
    return h(
      "table",
      attrs || {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
      h("tbody", {}, rows),
    );
  }

  function error(root, err) {
    root.append(h("p", { class: "error", role: "alert" }, String(err.message || err)));
  }

  function register(name, page) {
    pages[name] = page;
  }

  // Routes are "#/name/arg": the page object renders into <main> and may react to changes.
  async function route() {
    const parts = (window.location.hash || "#/map").slice(2).split("/");
    const name = pages[parts[0]] ? parts[0] : "map";
    const arg = parts.slice(1).map(decodeURIComponent).join("/");
    const main = document.getElementById("app");
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("active", link.dataset.nav === name || (name === "site" && link.dataset.nav === "sites"));
    }
    if (current && current.page.leave) current.page.leave();
    current = { name, page: pages[name], arg };
    main.replaceChildren();
    main.dataset.page = name;
    try {
      await current.page.render(main, arg);
    } catch (err) {
      error(main, err);
    }
  }

  // Live updates: one EventSource for the whole app; the server coalesces to at most one
  // message a second, and the page on screen decides what to refetch or patch.
  function live() {
    const dot = document.getElementById("live");
    const source = new EventSource("/console/api/events");
    source.addEventListener("open", () => dot && dot.classList.add("on"));
    source.addEventListener("error", () => dot && dot.classList.remove("on"));
    source.addEventListener("change", (event) => {
      const message = JSON.parse(event.data);
      if (current && current.page.change) {
        Promise.resolve(current.page.change(message, current.arg)).catch(() => {});
      }
    });
  }

  function start() {
    window.addEventListener("hashchange", route);
    route();
    live();
  }

  document.addEventListener("DOMContentLoaded", start);
  return { COLOURS, api, h, svg, badge, percent, ago, labels, table, error, register };
})();
