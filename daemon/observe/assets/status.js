"use strict";
// Polls the status JSON and redraws the totals and both tables. Every value
// is set with textContent or setAttribute, so no server data is parsed as
// HTML.
(function () {
  const jsonURL = new URL(document.body.dataset.jsonPath, document.baseURI);
  const intervalMs = Number(document.body.dataset.refreshMs) || 1000;
  const refreshState = document.getElementById("refresh-state");

  function cell(className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = String(text);
    return td;
  }

  function emptyRow(columns, text) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell("", text);
    td.colSpan = columns;
    tr.appendChild(td);
    return tr;
  }

  function depthMeter(b) {
    const meter = document.createElement("meter");
    meter.setAttribute("min", "0");
    meter.setAttribute("max", String(b.max_depth));
    meter.setAttribute("low", String(b.min_depth));
    meter.setAttribute("optimum", String(b.max_depth));
    meter.setAttribute("value", String(b.warm));
    const td = document.createElement("td");
    td.className = "depth";
    td.appendChild(meter);
    return td;
  }

  function bucketRow(b) {
    const tr = document.createElement("tr");
    tr.dataset.stack = b.stack;
    if (b.below_min) {
      tr.className = "below-min";
    }
    tr.append(
      cell("stack", b.stack),
      cell("snapshot", b.snapshot),
      cell("num warm", b.warm),
      cell("num restoring", b.restoring),
      cell("num target", b.min_depth + "\u2013" + b.max_depth),
      depthMeter(b),
      cell("num hit-rate", b.hit_rate),
      cell("num hits", b.hits),
      cell("num misses", b.misses),
      cell("num evictions", b.evictions),
      cell("num restores-ok", b.restores_ok),
      cell("num restores-failed", b.restores_failed),
      cell("last-error", b.last_error),
    );
    return tr;
  }

  function eventRow(e) {
    const tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    tr.append(
      cell("time", e.time),
      cell("age", e.age),
      cell("kind", e.kind),
      cell("stack", e.stack),
      cell("vm-id", e.vm_id),
      cell("reason", e.reason),
      cell("error", e.error),
    );
    return tr;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = String(text);
  }

  function render(status) {
    setText("generated-at", status.generated_at);
    setText("total-hit-rate", status.totals.hit_rate);
    setText("total-hits", status.totals.hits);
    setText("total-misses", status.totals.misses);
    setText("total-warm", status.totals.warm_vms);
    setText("total-restoring", status.totals.restoring_vms);
    const handedOut = document.getElementById("total-handed-out");
    if (handedOut && status.totals.handed_out_vms != null) {
      handedOut.textContent = String(status.totals.handed_out_vms);
    }
    setText("total-evictions", status.totals.evictions);
    setText("total-restores-failed", status.totals.restores_failed);
    setText("total-destroy-failures", status.totals.destroy_failures);

    const buckets = status.buckets.map(bucketRow);
    if (buckets.length === 0) {
      buckets.push(emptyRow(13, "No stacks registered."));
    }
    document.querySelector("#buckets tbody").replaceChildren(...buckets);

    const events = status.events.map(eventRow);
    if (events.length === 0) {
      events.push(emptyRow(7, "No evictions or failures yet."));
    }
    document.querySelector("#events tbody").replaceChildren(...events);
  }

  async function refresh() {
    try {
      const response = await fetch(jsonURL, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) {
        throw new Error("HTTP status " + response.status);
      }
      render(await response.json());
      refreshState.textContent = "Refreshing every " + intervalMs / 1000 + "s.";
      refreshState.className = "";
    } catch (err) {
      refreshState.textContent = "Refresh failed (" + err.message + "), so the data shown may be old.";
      refreshState.className = "error-state";
    } finally {
      setTimeout(refresh, intervalMs);
    }
  }

  refreshState.textContent = "Refreshing every " + intervalMs / 1000 + "s.";
  setTimeout(refresh, intervalMs);
})();
