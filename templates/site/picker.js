// bundle-build site: the upgrade-path picker. Every answer was planned by jumpkit when the
// site was written (data.js); this script only looks it up and draws it, so the page and
// 'bundle-build plan' can never disagree. No network, no framework: it works from file://.
(function () {
  "use strict";
  var site = window.JUMPKIT_SITE;
  var from = document.getElementById("from");
  var to = document.getElementById("to");
  var result = document.getElementById("result");

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function highlight(keys, versions) {
    document.querySelectorAll("svg.graph .edge").forEach(function (e) {
      e.classList.toggle("on", keys.indexOf(e.getAttribute("data-jump")) >= 0);
    });
    document.querySelectorAll("svg.graph .node").forEach(function (n) {
      n.classList.toggle("on", versions.indexOf(n.getAttribute("data-version")) >= 0);
    });
  }

  function downloads(jump) {
    if (!jump.downloads.length) {
      return [el("span", { "class": "none" }, ["not built"])];
    }
    var out = [];
    jump.downloads.forEach(function (d) {
      out.push(el("div", { "class": "download", "data-kind": d.kind }, [
        el("div", {}, [el("a", { href: d.href }, [d.name]), " ",
          el("span", { "class": "size", "data-bytes": String(d.size), title: d.size + " bytes" }, [d.size_text])]),
        el("div", {}, ["sha256 ", el("code", { "class": "sha256" }, [d.sha256])]),
        el("div", {}, ["check: ", el("code", { "class": "verify" }, [d.verify])])
      ]));
    });
    return out;
  }

  function showPath(a, b, path) {
    var rows = path.chain.map(function (key, i) {
      var j = site.jumps[key];
      var notes = [el("a", { href: j.page }, ["release notes, changes, tests"])];
      if (j.exception) { notes.push(el("div", { "class": "exception" }, ["policy exception: " + j.exception])); }
      notes.push(el("div", { "class": "note" }, ["components: " + j.changes]));
      if (j.tested) {
        notes.push(el("div", { "class": j.tested === "passed" ? "pass" : "fail" }, ["test-jumps: " + j.tested]));
      }
      return el("tr", { "class": "jump", "data-from": j.from, "data-to": j.to }, [
        el("td", {}, [String(i + 1)]),
        el("td", { "class": "jump-name" }, [j.from + " \u2192 " + j.to]),
        el("td", {}, downloads(j)),
        el("td", { "class": "outage" }, [j.outage === null ? "-" : "at most " + j.outage.toFixed(2) + " s"]),
        el("td", {}, notes)
      ]);
    });
    var n = path.chain.length;
    var head = site.product + " " + a + " \u2192 " + b + ": " + n + (n > 1 ? " jumps" : " jump") +
      (path.stops.length ? " (required stop" + (path.stops.length > 1 ? "s " : " ") + path.stops.join(", ") + ")" : "");
    var parts = [el("p", { "class": "headline", id: "path-headline" }, [head])];
    if (path.direct.length) {
      parts.push(el("p", { "class": "note", id: "path-why" }, ["Not in one jump: " + path.direct.join("; ") + "."]));
    }
    parts.push(el("table", { id: "path" }, [
      el("thead", {}, [el("tr", {}, ["Step", "Jump", "Bundle, size, sha256, check", "Outage", "More"].map(function (h) {
        return el("th", {}, [h]);
      }))]),
      el("tbody", {}, rows)
    ]));
    parts.push(el("p", { "class": "note" }, [n > 1
      ? "Apply the bundles in this order, or together in one outage: bundle-install apply B1 B2 ..."
      : "Apply it with: bundle-install apply BUNDLE (or yum install the RPM)."]));
    return parts;
  }

  function render() {
    var a = from.value, b = to.value;
    result.textContent = "";
    if (window.history && history.replaceState) {
      history.replaceState(null, "", "#from=" + encodeURIComponent(a) + "&to=" + encodeURIComponent(b));
    }
    if (a === b) {
      result.appendChild(el("p", { id: "path-error" }, ["Already at " + a + ": nothing to apply."]));
      highlight([], [a]);
      return;
    }
    var path = site.paths[a][b];
    if (path.error) {
      result.appendChild(el("p", { id: "path-error" }, [
        "No upgrade path " + a + " \u2192 " + b + ": " + path.error +
        ". Reachable from " + a + ": " + (path.reachable.length ? path.reachable.join(", ") : "none") + "."
      ]));
      highlight([], [a, b]);
      return;
    }
    showPath(a, b, path).forEach(function (p) { result.appendChild(p); });
    var versions = [a].concat(path.chain.map(function (k) { return site.jumps[k].to; }));
    highlight(path.chain, versions);
  }

  function fromHash() {
    var m = /from=([^&]+)&to=([^&]+)/.exec(window.location.hash);
    if (!m) { return; }
    var a = decodeURIComponent(m[1]), b = decodeURIComponent(m[2]);
    if (site.versions.indexOf(a) >= 0 && site.versions.indexOf(b) >= 0) { from.value = a; to.value = b; }
  }

  window.addEventListener("hashchange", function () { fromHash(); render(); });
  from.addEventListener("change", render);
  to.addEventListener("change", render);
  fromHash();
  render();
}());
