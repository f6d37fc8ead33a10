// The annotation page: one image at a time, driven by the collection's template.
// Keys: 1-9 choose a label, Enter saves and advances, z undoes the last mark,
// arrows move between images, + / - zoom. Time spent per image is measured here
// and sent with each save.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const kind = data.task_type;
  const items = data.items.map(function (it) {
    const v = it.value || {};
    return {
      id: it.id, done: it.done, name: it.name,
      label: it.label || (kind === "label" ? it.predicted : null) || null,
      points: (v.points || []).map(function (p) { return [p[0], p[1]]; }),
      shapes: (v.shapes || []).map(function (s) { return {type: s.type, points: s.points, label: s.label}; }),
      time: 0,
    };
  });
  const img = document.getElementById("image");
  const canvas = document.getElementById("overlay");
  const ctx = canvas.getContext("2d");
  const stage = document.getElementById("stage");
  const viewport = document.getElementById("viewport");
  const statusEl = document.getElementById("status");
  const doneEl = document.getElementById("done-count");
  const sliceBox = document.getElementById("slice-box");
  const slice = document.getElementById("slice");
  const strip = Array.prototype.slice.call(document.querySelectorAll("#strip .thumb"));
  const labelButtons = Array.prototype.slice.call(document.querySelectorAll("#labels .label"));
  let current = -1, shownAt = 0, tool = "pan";
  let scale = 1, tx = 0, ty = 0, drag = null, pending = [], z = null, objectUrl = null;
  // marks are kept in full-resolution pixels; a big image may be sent reduced
  let fullShape = null, ry = 1, rx = 1;

  function say(text, bad) {
    statusEl.textContent = text;
    statusEl.className = "status" + (bad ? " bad" : "");
  }
  function apply() {
    stage.style.transform = "translate(" + tx + "px," + ty + "px) scale(" + scale + ")";
    draw();
  }
  function fit() {
    if (!img.naturalWidth) return;
    scale = Math.min(viewport.clientWidth / img.naturalWidth, viewport.clientHeight / img.naturalHeight);
    tx = (viewport.clientWidth - img.naturalWidth * scale) / 2;
    ty = (viewport.clientHeight - img.naturalHeight * scale) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    const ns = Math.min(64, Math.max(0.02, scale * factor));
    tx = cx - (cx - tx) * ns / scale;
    ty = cy - (cy - ty) * ns / scale;
    scale = ns;
    apply();
  }
  function item() { return items[current]; }
  function stopClock() {
    if (current >= 0 && shownAt) item().time += (performance.now() - shownAt) / 1000;
    shownAt = 0;
  }
  function imageUrl(it) {
    const q = [];
    if (z !== null) q.push("z=" + z);
    const lo = document.getElementById("lo").value.trim(), hi = document.getElementById("hi").value.trim();
    if (lo && hi) { q.push("lo=" + encodeURIComponent(lo)); q.push("hi=" + encodeURIComponent(hi)); }
    return data.image_url + it.id + (q.length ? "?" + q.join("&") : "");
  }
  function load(keepView) {
    const it = item();
    fetch(imageUrl(it), {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) throw new Error("the image cannot be shown (" + r.status + ")");
      const n = parseInt(r.headers.get("X-Image-Slices") || "1", 10);
      fullShape = (r.headers.get("X-Image-Shape") || "").split(",").map(Number);
      sliceBox.hidden = n <= 1;
      if (n > 1) {
        slice.max = String(n - 1);
        slice.value = r.headers.get("X-Image-Slice") || "0";
        document.getElementById("slice-n").textContent = slice.value + " / " + (n - 1);
      }
      return r.blob();
    }).then(function (blob) {
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      img.onload = function () {
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        ry = fullShape && fullShape[0] ? fullShape[0] / img.naturalHeight : 1;
        rx = fullShape && fullShape[1] ? fullShape[1] / img.naturalWidth : 1;
        if (keepView) apply(); else fit();
        img.dataset.ready = String(it.id);
        // time to first render (ms since navigation start), read by benchmarks/bench_web.py
        if (!document.body.dataset.firstImageMs) document.body.dataset.firstImageMs = performance.now().toFixed(1);
      };
      img.src = objectUrl;
    }).catch(function (e) { say(e.message, true); });
  }
  function show(index) {
    if (index < 0 || index >= items.length) return;
    stopClock();
    current = index;
    pending = [];
    z = null;
    strip.forEach(function (li, k) {
      li.classList.toggle("current", k === index);
    });
    strip[index].scrollIntoView({block: "nearest", inline: "nearest"});
    img.dataset.ready = "";
    load(false);
    markLabel();
    say(item().name + (item().done ? " (saved)" : ""));
    shownAt = performance.now();
  }
  function markLabel() {
    labelButtons.forEach(function (b) {
      b.classList.toggle("selected", b.dataset.label === item().label);
    });
  }
  function setLabel(label) {
    item().label = label;
    markLabel();
  }
  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (current < 0) return;
    ctx.setTransform(1 / rx, 0, 0, 1 / ry, 0, 0);  // draw in full-resolution pixels
    const it = item(), w = 2 * rx / scale;
    ctx.lineWidth = w;
    ctx.strokeStyle = "#ffd400";
    ctx.fillStyle = "#ffd400";
    it.points.forEach(function (p) {
      ctx.beginPath();
      ctx.arc(p[1], p[0], 4 * rx / scale, 0, 2 * Math.PI);
      ctx.fill();
    });
    it.shapes.concat(pending.length ? [{points: pending, open: true}] : []).forEach(function (s) {
      ctx.beginPath();
      s.points.forEach(function (p, k) { if (k) ctx.lineTo(p[1], p[0]); else ctx.moveTo(p[1], p[0]); });
      if (!s.open) ctx.closePath();
      ctx.stroke();
    });
    if (drag && drag.box) {
      ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
    }
  }
  function pos(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientY - r.top) / r.height * canvas.height * ry,
            (ev.clientX - r.left) / r.width * canvas.width * rx];
  }
  function value() {
    const it = item(), v = {};
    if (kind === "points") {
      v.points = it.points;
      v.labels = it.label ? it.points.map(function () { return it.label; }) : [];
    } else if (kind === "contour") {
      v.shapes = it.shapes.map(function (s) { return {type: s.type, points: s.points, label: it.label || s.label || null}; });
    }
    if (z !== null && !sliceBox.hidden) v.slice = z;
    return v;
  }
  function save() {
    const it = item();
    if (kind === "label" && !it.label) { say("choose a label first (keys 1-9)", true); return; }
    stopClock();
    const body = {image_id: it.id, value: value(), time_spent: Math.round(it.time * 1000) / 1000};
    if (it.label) body.label = it.label;
    const index = current;
    fetch(data.save_url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body),
    }).then(function (r) {
      return r.json().then(function (j) { return {ok: r.ok, j: j}; });
    }).then(function (res) {
      if (!res.ok) throw new Error(res.j.detail || "the save was refused");
      if (!items[index].done) doneEl.textContent = String(parseInt(doneEl.textContent, 10) + 1);
      items[index].done = true;
      items[index].time = 0;
      strip[index].classList.remove("todo");
      strip[index].classList.add("done");
      if (index + 1 < items.length) show(index + 1);
      else { say("saved; this page is done", false); shownAt = performance.now(); }
      document.body.dataset.saved = String((parseInt(document.body.dataset.saved || "0", 10)) + 1);
    }).catch(function (e) { shownAt = performance.now(); say(e.message, true); });
  }

  // ---------------------------------------------------------------- events
  document.querySelectorAll("#toolbar .tool").forEach(function (b) {
    b.addEventListener("click", function () {
      tool = b.dataset.tool;
      pending = [];
      document.querySelectorAll("#toolbar .tool").forEach(function (o) { o.classList.toggle("active", o === b); });
      viewport.dataset.tool = tool;
      draw();
    });
  });
  document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(1.25, viewport.clientWidth / 2, viewport.clientHeight / 2); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(0.8, viewport.clientWidth / 2, viewport.clientHeight / 2); });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  const undo = document.getElementById("undo");
  function undoLast() {
    const it = item();
    if (pending.length) pending.pop();
    else if (kind === "points") it.points.pop();
    else it.shapes.pop();
    draw();
  }
  if (undo) undo.addEventListener("click", undoLast);
  document.getElementById("save").addEventListener("click", save);
  labelButtons.forEach(function (b) { b.addEventListener("click", function () { setLabel(b.dataset.label); }); });
  strip.forEach(function (li, k) { li.addEventListener("click", function () { show(k); }); });
  slice.addEventListener("change", function () {
    z = parseInt(slice.value, 10);
    load(true);
  });
  ["lo", "hi"].forEach(function (id) { document.getElementById(id).addEventListener("change", function () { load(true); }); });
  viewport.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    const r = viewport.getBoundingClientRect();
    zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
  }, {passive: false});
  viewport.addEventListener("mousedown", function (ev) {
    if (current < 0 || ev.button !== 0) return;
    const p = pos(ev);
    if (tool === "pan") drag = {pan: true, x: ev.clientX, y: ev.clientY, tx: tx, ty: ty};
    else if (tool === "box") drag = {box: true, y0: p[0], x0: p[1], y1: p[0], x1: p[1]};
    ev.preventDefault();
  });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    if (drag.pan) { tx = drag.tx + ev.clientX - drag.x; ty = drag.ty + ev.clientY - drag.y; apply(); }
    else if (drag.box) { const p = pos(ev); drag.y1 = p[0]; drag.x1 = p[1]; draw(); }
  });
  window.addEventListener("mouseup", function () {
    if (drag && drag.box) {
      const y0 = Math.min(drag.y0, drag.y1), y1 = Math.max(drag.y0, drag.y1);
      const x0 = Math.min(drag.x0, drag.x1), x1 = Math.max(drag.x0, drag.x1);
      if (y1 - y0 >= 1 && x1 - x0 >= 1) {
        item().shapes.push({type: "rectangle", points: [[y0, x0], [y0, x1], [y1, x1], [y1, x0]], label: item().label});
      }
    }
    drag = null;
    draw();
  });
  viewport.addEventListener("click", function (ev) {
    if (current < 0) return;
    const p = pos(ev);
    if (tool === "point") { item().points.push(p); draw(); }
    else if (tool === "polygon") {
      const last = pending[pending.length - 1];
      if (!last || Math.hypot(last[0] - p[0], last[1] - p[1]) * scale / rx > 3) pending.push(p);
      draw();
    }
  });
  viewport.addEventListener("dblclick", function () {
    if (tool === "polygon" && pending.length >= 3) {
      item().shapes.push({type: "polygon", points: pending, label: item().label});
      pending = [];
      draw();
    }
  });
  document.addEventListener("keydown", function (ev) {
    const t = ev.target.tagName;
    if (t === "INPUT" || t === "TEXTAREA" || t === "SELECT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (/^[1-9]$/.test(ev.key)) {
      const b = labelButtons[parseInt(ev.key, 10) - 1];
      if (b) { setLabel(b.dataset.label); ev.preventDefault(); }
    } else if (ev.key === "Enter") { ev.preventDefault(); save(); }
    else if (ev.key === "z") { undoLast(); }
    else if (ev.key === "ArrowRight") { show(current + 1); }
    else if (ev.key === "ArrowLeft") { show(current - 1); }
    else if (ev.key === "+" || ev.key === "=") { zoomAt(1.25, viewport.clientWidth / 2, viewport.clientHeight / 2); }
    else if (ev.key === "-") { zoomAt(0.8, viewport.clientWidth / 2, viewport.clientHeight / 2); }
  });
  window.addEventListener("resize", fit);
  if (items.length) {
    const first = items.findIndex(function (it) { return !it.done; });
    show(first >= 0 ? first : 0);
  } else {
    say("this collection has no images yet");
  }
})();
