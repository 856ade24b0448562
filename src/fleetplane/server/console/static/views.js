// Fleet-wide pages: virtual sites, pending registrations (Accept / Reject), rollouts with
// live progress, alerts, CPU/memory distribution charts and vK8s workloads per site.
"use strict";

(() => {
  const { h, svg, api, badge, labels, table, ago, error } = FP;

  function siteLink(name) {
    return h("a", { href: "#/site/" + encodeURIComponent(name) }, name);
  }

  // A page that refetches when one of ``kinds`` changed (the server already throttles).
  function simple(name, kinds, build) {
    let root = null;
    async function draw() {
      const fresh = h("div", {});
      await build(fresh);
      if (root) root.replaceChildren(...fresh.childNodes);
    }
    FP.register(name, {
      render: async (main) => {
        root = main;
        await draw();
      },
      change: (message) => (root && message.kinds.some((k) => kinds.includes(k)) ? draw() : null),
      leave: () => {
        root = null;
      },
    });
  }

  function colourCounts(counts) {
    return h(
      "span",
      { class: "counts" },
      ["green", "orange", "red", "grey"].map((c) => h("span", { class: "count " + c, title: c }, counts[c] || 0)),
    );
  }

  simple("virtualsites", ["VirtualSite", "Site"], async (root) => {
    const data = await api("/virtualsites");
    root.append(h("h1", {}, "Virtual sites"));
    if (!data.items.length) root.append(h("p", { class: "muted" }, "No virtual sites yet."));
    for (const vs of data.items) {
      root.append(
        h(
          "section",
          { class: "card", "data-virtualsite": `${vs.namespace}/${vs.name}` },
          h("h2", {}, `${vs.namespace}/${vs.name}`, " ", colourCounts(vs.counts)),
          h("p", {}, h("code", {}, vs.selector || "(every site)"), ` — ${vs.total} member site(s)`),
          vs.description ? h("p", { class: "muted" }, vs.description) : null,
          h(
            "div",
            { class: "members" },
            vs.members.map((m) => h("span", { class: "member" }, badge(m.colour, m.score), " ", siteLink(m.name))),
            vs.total > vs.members.length ? h("span", { class: "muted" }, `and ${vs.total - vs.members.length} more`) : null,
          ),
        ),
      );
    }
  });

  async function decide(name, verb, body, status) {
    status.textContent = verb === "accept" ? "Accepting…" : "Rejecting…";
    try {
      await api(`/registrations/${encodeURIComponent(name)}/${verb}`, { method: "POST", body });
      status.textContent = verb === "accept" ? "Accepted" : "Rejected";
    } catch (err) {
      status.textContent = "";
      status.append(h("span", { class: "error", role: "alert" }, err.message));
    }
  }

  simple("registrations", ["Registration", "Site"], async (root) => {
    const data = await api("/registrations");
    root.append(h("h1", {}, "Registrations"));
    const pending = data.items.filter((r) => r.phase === "Pending");
    root.append(h("p", { id: "pending-count" }, `${pending.length} pending`));
    const rows = data.items.map((r) => {
      const status = h("span", { class: "decision" });
      const reason = h("input", { type: "text", placeholder: "reason to reject", class: "reason" });
      const actions =
        r.phase === "Pending"
          ? h(
              "td",
              {},
              h("button", { class: "accept", onclick: () => decide(r.name, "accept", {}, status) }, "Accept"),
              reason,
              h(
                "button",
                {
                  class: "reject",
                  onclick: () => decide(r.name, "reject", { reason: reason.value || "rejected in the console" }, status),
                },
                "Reject",
              ),
              status,
            )
          : h("td", {}, r.site ? siteLink(r.site) : h("span", { class: "muted" }, r.reason || ""));
      return h(
        "tr",
        { "data-registration": r.name, "data-phase": r.phase },
        h("td", {}, r.name),
        h("td", {}, r.phase),
        h("td", {}, r.hostname || "–"),
        h("td", { class: "hardware" }, r.hardware || "–"),
        h("td", { class: "location" }, r.location || "–"),
        h("td", {}, `${r.method || ""} ${r.source}`),
        h("td", {}, labels(r.labels)),
        h("td", {}, ago(r.created)),
        actions,
      );
    });
    root.append(table(["Name", "Phase", "Hostname", "Hardware", "Location", "Via", "Requested labels", "Asked", ""], rows, { id: "registrations" }));
  });

  simple("rollouts", ["Rollout"], async (root) => {
    const data = await api("/rollouts");
    root.append(h("h1", {}, "Rollouts"));
    if (!data.items.length) root.append(h("p", { class: "muted" }, "No rollouts yet."));
    for (const ro of data.items) {
      const fill = h("div", { class: "fill" });
      fill.style.width = (100 * ro.progress).toFixed(1) + "%";
      const c = ro.counts;
      root.append(
        h(
          "section",
          { class: "card rollout", "data-rollout": `${ro.namespace}/${ro.name}` },
          h("h2", {}, `${ro.namespace}/${ro.name}`, " ", h("span", { class: "phase " + ro.phase }, ro.phase)),
          h("div", { class: "bar big", role: "progressbar", "aria-valuenow": Math.round(100 * ro.progress) }, fill),
          h(
            "p",
            { class: "rollout-counts" },
            `${c.succeeded || 0} of ${ro.total} sites succeeded · ${c.inProgress || 0} in progress · ` +
              `${c.pending || 0} pending · ${c.failed || 0} failed`,
            c.rolledBack ? ` · ${c.rolledBack} rolled back` : "",
          ),
        ),
      );
    }
  });

  simple("alerts", ["Alert"], async (root) => {
    const data = await api("/alerts");
    root.append(h("h1", {}, "Alerts"));
    if (!data.available) {
      root.append(h("p", { class: "muted" }, "Alerting (AlertRule / Alert) is not enabled on this server yet."));
      return;
    }
    if (!data.items.length) {
      root.append(h("p", { class: "ok" }, "No alerts: nothing is firing."));
      return;
    }
    const rows = data.items.map((a) =>
      h(
        "tr",
        { "data-alert": `${a.namespace}/${a.name}`, class: "alert " + a.state },
        h("td", {}, `${a.namespace}/${a.name}`),
        h("td", {}, h("span", { class: "state " + a.state }, a.state)),
        h("td", {}, a.severity),
        h("td", {}, a.rule, a.expr ? h("div", { class: "muted" }, a.expr) : null),
        h("td", {}, ago(a.since)),
        h(
          "td",
          {},
          a.affected.map((s) => h("span", { class: "member" }, a.subject === "site" ? siteLink(s) : s)),
          a.count > a.affected.length ? h("span", { class: "muted" }, `and ${a.count - a.affected.length} more`) : null,
        ),
      ),
    );
    root.append(table(["Alert", "State", "Severity", "Rule", "Since", "Affected"], rows, { id: "alerts" }));
  });

  // A simple SVG histogram: one bar per 10 % bucket, the height the share of sites.
  function histogram(title, series, buckets, colour) {
    const W = 420,
      H = 180,
      pad = 28;
    const max = Math.max(1, ...series.counts);
    const width = (W - pad) / buckets.length;
    const bars = series.counts.map((n, i) => {
      const height = ((H - pad) * n) / max;
      return svg(
        "g",
        {},
        svg("rect", {
          x: pad + i * width + 2,
          y: H - pad - height,
          width: width - 4,
          height,
          fill: colour,
          "data-bucket": buckets[i],
          "data-count": n,
        }),
        svg("text", { x: pad + i * width + width / 2, y: H - pad - height - 3, class: "bar-label" }, n || ""),
        svg("text", { x: pad + i * width + width / 2, y: H - 10, class: "axis" }, buckets[i].split("-")[0]),
      );
    });
    return h(
      "figure",
      { class: "chart" },
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, bars,
        svg("line", { x1: pad, y1: H - pad, x2: W, y2: H - pad, class: "axis-line" })),
      h(
        "figcaption",
        {},
        `${title}: ${series.sites} sites reporting; ${(100 * series.over75).toFixed(0)} % of them above 75 %`,
      ),
    );
  }

  let scope = "";
  simple("resources", ["Site", "VirtualSite"], async (root) => {
    const [data, vsites] = await Promise.all([
      api("/distribution" + (scope ? "?virtualSite=" + encodeURIComponent(scope) : "")),
      api("/virtualsites"),
    ]);
    const select = h(
      "select",
      {
        id: "scope",
        onchange: () => {
          scope = select.value;
          window.dispatchEvent(new HashChangeEvent("hashchange"));
        },
      },
      h("option", { value: "" }, "whole fleet"),
      vsites.items.map((v) => {
        const key = `${v.namespace}/${v.name}`;
        return h("option", { value: key, selected: key === scope }, key);
      }),
    );
    root.append(
      h("h1", {}, "Resource distribution"),
      h("p", {}, h("label", { for: "scope" }, "Sites of "), select),
      h(
        "div",
        { class: "charts" },
        histogram("CPU in use", data.cpu, data.buckets, "#3b6fd4"),
        histogram("Memory in use", data.memory, data.buckets, "#8e44ad"),
      ),
    );
  });

  simple("workloads", ["Workload"], async (root) => {
    const data = await api("/workloads");
    root.append(h("h1", {}, "vK8s workloads"));
    if (!data.items.length) {
      root.append(h("p", { class: "muted" }, "No vK8s Deployments, StatefulSets or Jobs yet."));
      return;
    }
    for (const w of data.items) {
      const s = w.siteStates;
      const pods = Object.entries(w.podStates)
        .filter(([, n]) => n)
        .map(([state, n]) => h("span", { class: "pod-state " + state }, `${state} ${n}`));
      const rows = w.perSite.map((p) =>
        h(
          "tr",
          { class: "site-state " + p.state },
          h("td", {}, siteLink(p.site)),
          h("td", {}, p.state),
          h("td", { class: "num" }, `${p.readyReplicas ?? 0} / ${p.desiredReplicas ?? 0}`),
          h("td", {}, p.reason || ""),
        ),
      );
      root.append(
        h(
          "section",
          { class: "card", "data-workload": `${w.namespace}/${w.kind}/${w.name}` },
          h("h2", {}, `${w.namespace}/${w.name}`, " ", h("span", { class: "muted" }, w.kind)),
          h(
            "p",
            {},
            `${w.ready} of ${w.desired} pods ready on ${w.sites} site(s): ` +
              `${s.deployed || 0} deployed, ${s.inProgress || 0} in progress, ${s.failed || 0} failed`,
          ),
          pods.length ? h("p", { class: "pods" }, pods) : null,
          w.failing.length
            ? h("ul", { class: "reasons" }, w.failing.map((f) => h("li", {}, siteLink(f.site), ": ", f.reason)))
            : null,
          rows.length
            ? h("details", {}, h("summary", {}, "Per site"), table(["Site", "State", "Ready", "Reason"], rows))
            : null,
        ),
      );
    }
  });

  void error;
})();
