// The sites table (label-selector filter, paging) and the site page.
"use strict";

(() => {
  const { h, api, badge, percent, ago, labels, table } = FP;
  const PAGE = 50;
  let sites = null; // { selector, offset, body }

  function siteLink(name) {
    return h("a", { href: "#/site/" + encodeURIComponent(name) }, name);
  }

  async function loadSites() {
    const query = new URLSearchParams({ offset: String(sites.offset), limit: String(PAGE) });
    if (sites.selector) query.set("labelSelector", sites.selector);
    let data;
    try {
      data = await api("/sites?" + query);
    } catch (err) {
      sites.body.replaceChildren(h("p", { class: "error", role: "alert", id: "selector-error" }, err.message));
      return;
    }
    const rows = data.items.map((s) =>
      h(
        "tr",
        { "data-site": s.name },
        h("td", {}, siteLink(s.name), s.displayName ? h("div", { class: "muted" }, s.displayName) : null),
        h("td", {}, badge(s.colour, s.score)),
        h("td", {}, s.phase),
        h("td", { class: "num" }, percent(s.cpu)),
        h("td", { class: "num" }, percent(s.memory)),
        h("td", {}, s.version || "–"),
        h("td", { class: "num" }, s.nodes),
        h("td", {}, ago(s.lastSeen)),
        h("td", {}, labels(s.labels)),
      ),
    );
    const last = Math.min(data.total, data.offset + data.items.length);
    const pager = h(
      "div",
      { class: "pager" },
      h("span", { id: "sites-count" }, `${data.total ? data.offset + 1 : 0}–${last} of ${data.total} sites`),
      h("button", { disabled: data.offset === 0, onclick: () => page(-PAGE) }, "‹ Previous"),
      h("button", { disabled: last >= data.total, onclick: () => page(PAGE) }, "Next ›"),
    );
    sites.body.replaceChildren(
      pager,
      table(["Site", "Health", "Phase", "CPU", "Memory", "Version", "Nodes", "Last seen", "Labels"], rows, {
        id: "sites-table",
      }),
    );
  }

  function page(delta) {
    sites.offset = Math.max(0, sites.offset + delta);
    loadSites();
  }

  async function renderSites(root, arg) {
    const input = h("input", {
      id: "selector",
      type: "search",
      placeholder: "label selector, e.g. region=eu,tier in (gold,silver),!canary",
      value: arg || "",
      size: 60,
    });
    const form = h(
      "form",
      {
        class: "filter",
        onsubmit: (event) => {
          event.preventDefault();
          sites.selector = input.value.trim();
          sites.offset = 0;
          loadSites();
        },
      },
      h("label", { for: "selector" }, "Filter"),
      input,
      h("button", { type: "submit", id: "apply-selector" }, "Apply"),
    );
    const body = h("div", { id: "sites-body" });
    root.append(h("h1", {}, "Sites"), form, body);
    sites = { selector: arg || "", offset: 0, body };
    await loadSites();
  }

  function bar(value) {
    const fill = h("div", { class: "fill" });
    fill.style.width = Math.max(0, Math.min(100, value)) + "%";
    return h("div", { class: "bar" }, fill);
  }

  function healthBlock(health) {
    if (!health) return h("p", { class: "muted" }, "No health yet: the site has not reported.");
    const parts = Object.entries(health.parts || {}).map(([part, value]) =>
      h("tr", {}, h("th", {}, part), h("td", { class: "num" }, value), h("td", { class: "wide" }, bar(value))),
    );
    return h(
      "div",
      {},
      h("p", {}, "Score ", badge(health.colour, health.score)),
      h("table", { class: "parts" }, h("tbody", {}, parts)),
      health.reasons && health.reasons.length
        ? h("ul", { class: "reasons" }, health.reasons.map((r) => h("li", {}, r)))
        : h("p", { class: "muted" }, "Nothing lowers the score."),
    );
  }

  function manifestBlock(m) {
    const head = h(
      "p",
      {},
      `Desired generation ${m.desiredGeneration ?? "–"}, reported ${m.reportedGeneration ?? "–"}: `,
      h("strong", {}, m.state || "not reported"),
    );
    if (!m.sections.length) return h("div", {}, head, h("p", { class: "muted" }, "No intents apply to this site."));
    const rows = m.sections.map((s) =>
      h(
        "tr",
        {},
        h("td", {}, s.name),
        h("td", {}, Object.entries(s.revisions).map(([k, v]) => h("div", {}, `${k} @ ${v}`))),
        h(
          "td",
          {},
          s.items.length
            ? s.items.map((i) =>
                h("div", { class: "item " + i.state }, `${i.name}: ${i.state}`, i.reason ? ` (${i.reason})` : ""),
              )
            : h("span", { class: "muted" }, "not reported"),
        ),
      ),
    );
    return h("div", {}, head, table(["Section", "Intents (revision)", "Status"], rows));
  }

  async function renderSite(root, name) {
    const s = await api("/sites/" + encodeURIComponent(name));
    const colour = s.health ? s.health.colour : "grey";
    root.append(
      h("p", {}, h("a", { href: "#/sites" }, "‹ Sites")),
      h("h1", {}, s.name, " ", badge(colour, s.health ? s.health.score : null)),
      ...(s.spec.displayName ? [h("p", {}, s.spec.displayName)] : []), // root.append would print a null
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Phase"),
        h("dd", { id: "site-phase" }, s.phase),
        h("dt", {}, "Last seen"),
        h("dd", {}, ago(s.lastSeen)),
        h("dt", {}, "Software"),
        h("dd", {}, s.softwareVersion || "–"),
        h("dt", {}, "OS"),
        h("dd", {}, s.osVersion || "–"),
        h("dt", {}, "CPU / memory"),
        h("dd", {}, `${percent(s.cpu)} / ${percent(s.memory)}`),
        h("dt", {}, "Labels"),
        h("dd", {}, labels(s.labels)),
        h("dt", {}, "Location"),
        h("dd", {}, s.spec.coordinates ? `${s.spec.coordinates.latitude}, ${s.spec.coordinates.longitude}` : "–"),
      ),
      h("section", {}, h("h2", {}, "Health"), healthBlock(s.health)),
      h(
        "section",
        {},
        h("h2", {}, "Nodes"),
        s.nodes.length
          ? table(
              ["Node", "Role", "CPU (m)", "Memory (MiB)", "Ready"],
              s.nodes.map((n) =>
                h(
                  "tr",
                  {},
                  h("td", {}, n.name),
                  h("td", {}, n.role),
                  h("td", { class: "num" }, n.cpuMillis),
                  h("td", { class: "num" }, Math.round(n.memoryBytes / 1048576)),
                  h("td", {}, n.ready ? "yes" : "no"),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No nodes reported."),
      ),
      h("section", {}, h("h2", {}, "Applied intents"), manifestBlock(s.manifest)),
      h(
        "section",
        {},
        h("h2", {}, "Recent events"),
        (s.events || []).length
          ? table(
              ["Last seen", "Type", "Reason", "Count", "Message"],
              s.events.map((e) =>
                h(
                  "tr",
                  {},
                  h("td", {}, ago(e.lastTimestamp)),
                  h("td", {}, e.type),
                  h("td", {}, e.reason),
                  h("td", {}, String(e.count)),
                  h("td", {}, e.message),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No events in the retention window."),
        h("h3", {}, "Conditions"),
        s.conditions.length
          ? table(
              ["Type", "Status", "Reason", "Message", "Since"],
              s.conditions.map((c) =>
                h(
                  "tr",
                  {},
                  h("td", {}, c.type),
                  h("td", {}, c.status),
                  h("td", {}, c.reason || ""),
                  h("td", {}, c.message || ""),
                  h("td", {}, ago(c.lastTransitionTime)),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No conditions reported."),
      ),
      h(
        "section",
        {},
        h("h2", {}, "Pods"),
        s.pods.length
          ? table(
              ["Pod", "Workload", "Phase", "Restarts", "Node"],
              s.pods.map((p) =>
                h(
                  "tr",
                  {},
                  h("td", {}, p.name),
                  h("td", {}, p.workload),
                  h("td", {}, p.phase),
                  h("td", { class: "num" }, p.restarts),
                  h("td", {}, p.node || ""),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No vK8s pods on this site."),
      ),
    );
  }

  FP.register("sites", {
    render: renderSites,
    change: (message) => (sites && message.kinds.includes("Site") ? loadSites() : null),
    leave: () => {
      sites = null;
    },
  });
  FP.register("site", {
    render: renderSite,
    change: (message, name) =>
      message.sites === null || (message.sites || []).some((row) => row[0] === name)
        ? rerender(document.getElementById("app"), name)
        : null,
  });

  async function rerender(main, name) {
    const fresh = h("div", {});
    await renderSite(fresh, name);
    main.replaceChildren(...fresh.childNodes);
  }
})();
