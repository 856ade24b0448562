// The fleet map: the world's land (Natural Earth, projected once by the server into a
// 360 x 180 box) and every site as a dot in its health colour; a click opens the site.
"use strict";

(() => {
  const { h, svg, api, COLOURS } = FP;
  let land = null; // the land path, fetched once per page load
  let state = null; // { layer, dots: Map(name -> circle), counts, legend }

  // Equirectangular, as server/console/geo.py: x = lon + 180, y = 90 - lat.
  function place(circle, lat, lon) {
    circle.setAttribute("cx", (lon + 180).toFixed(2));
    circle.setAttribute("cy", (90 - lat).toFixed(2));
  }

  function paint(circle, name, colour, score) {
    circle.setAttribute("fill", COLOURS[colour] || COLOURS.grey);
    circle.dataset.colour = colour;
    circle.dataset.score = score === null ? "" : String(score);
    circle.replaceChildren(svg("title", {}, `${name}: ${score === null ? "no health yet" : "health " + score}`));
  }

  function dot(name, lat, lon, colour, score) {
    const circle = svg("circle", {
      r: 1.6,
      class: "dot",
      "data-site": name,
      onclick: () => {
        window.location.hash = "#/site/" + encodeURIComponent(name);
      },
    });
    place(circle, lat, lon);
    paint(circle, name, colour, score);
    return circle;
  }

  function legend(counts, unplaced) {
    const items = ["green", "orange", "red", "grey"].map((c) =>
      h(
        "span",
        { class: "legend-item", "data-legend": c },
        h("span", { class: "swatch " + c }),
        `${{ green: "healthy > 75", orange: "40–75", red: "< 40", grey: "no data" }[c]}: ${counts[c] || 0}`,
      ),
    );
    if (unplaced) items.push(h("span", { class: "muted" }, `${unplaced} without coordinates`));
    return h("div", { class: "legend" }, items);
  }

  async function render(root) {
    root.append(h("h1", {}, "Fleet map"));
    const [world, data] = await Promise.all([land || fetch("/console/land.json").then((r) => r.json()), api("/map")]);
    land = world;
    const layer = svg("g", { class: "dots" });
    const dots = new Map();
    for (const [name, lat, lon, colour, score] of data.sites) {
      const circle = dot(name, lat, lon, colour, score);
      dots.set(name, circle);
      layer.append(circle);
    }
    const map = svg(
      "svg",
      { viewBox: `0 0 ${world.width} ${world.height}`, class: "world", role: "img", "aria-label": "world map of sites" },
      svg("rect", { width: world.width, height: world.height, class: "sea" }),
      svg("path", { d: world.path, class: "land" }),
      layer,
    );
    const legendBox = h("div", {}, legend(data.counts, data.unplaced));
    root.append(legendBox, h("div", { class: "map-frame" }, map));
    state = { layer, dots, legendBox, unplaced: data.unplaced };
  }

  async function refresh() {
    const data = await api("/map");
    const seen = new Set();
    for (const [name, lat, lon, colour, score] of data.sites) {
      seen.add(name);
      update(name, lat, lon, colour, score);
    }
    for (const [name, circle] of state.dots) {
      if (!seen.has(name)) {
        circle.remove();
        state.dots.delete(name);
      }
    }
    state.unplaced = data.unplaced;
    state.legendBox.replaceChildren(legend(data.counts, data.unplaced));
  }

  function update(name, lat, lon, colour, score) {
    let circle = state.dots.get(name);
    if (lat === null || lat === undefined) {
      if (circle) circle.remove();
      state.dots.delete(name);
      return;
    }
    if (!circle) {
      circle = dot(name, lat, lon, colour, score);
      state.dots.set(name, circle);
      state.layer.append(circle);
      return;
    }
    place(circle, lat, lon);
    paint(circle, name, colour, score);
  }

  async function change(message) {
    if (!state || !message.kinds.includes("Site")) return;
    if (message.sites === null) {
      await refresh(); // too many changed at once: one refetch beats many patches
      return;
    }
    for (const [name, lat, lon, colour, score] of message.sites) update(name, lat, lon, colour, score);
    const counts = { green: 0, orange: 0, red: 0, grey: 0 };
    for (const circle of state.dots.values()) counts[circle.dataset.colour] += 1;
    state.legendBox.replaceChildren(legend(counts, state.unplaced));
  }

  FP.register("map", {
    render,
    change,
    leave: () => {
      state = null;
    },
  });
})();
