// avloc report: sorting and filtering of the index; timeline seeking and the current boxes on a video page.
// No dependencies, no network. Strings from the data are only ever written with textContent.
(function () {
  "use strict";

  function fmtTime(t) {
    var m = Math.floor(t / 60), s = t - 60 * m;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
  }

  // -- the index ------------------------------------------------------------------------------
  function initIndex(table) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var filter = document.getElementById("filter");
    var shown = document.getElementById("shown");
    var heads = table.tHead.querySelectorAll("th[data-key]");

    function applyFilter() {
      var q = (filter.value || "").trim().toLowerCase();
      var n = 0;
      rows.forEach(function (r) {
        var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
        r.hidden = !hit;
        if (hit) n += 1;
      });
      shown.textContent = n + " of " + rows.length + " shown";
    }

    function sortBy(th) {
      var key = th.getAttribute("data-key");
      var numeric = th.getAttribute("data-type") === "number";
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = a.getAttribute("data-" + key), y = b.getAttribute("data-" + key);
        if (numeric) {
          // empty (n/a) sorts last either way
          if (x === "" || y === "") return (x === "") - (y === "");
          return dir * (parseFloat(x) - parseFloat(y));
        }
        return dir * x.localeCompare(y);
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
    }

    Array.prototype.forEach.call(heads, function (th) {
      th.addEventListener("click", function () { sortBy(th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); } });
    });
    filter.addEventListener("input", applyFilter);
    applyFilter();
  }

  // -- a video page ---------------------------------------------------------------------------
  function initVideo(svg, data) {
    var video = document.getElementById("player");
    var cursor = document.getElementById("cursor");
    var hit = document.getElementById("timeline-hit");
    var x0 = parseFloat(svg.getAttribute("data-x0"));
    var width = parseFloat(svg.getAttribute("data-width"));
    var duration = parseFloat(svg.getAttribute("data-duration"));
    var tbody = document.querySelector("#boxes tbody");
    var noBoxes = document.getElementById("no-boxes");
    var clock = document.getElementById("current-time");
    var shownFrame = -2;

    function frameAt(t) {  // the analysed frame shown at time t: the last with time <= t
      var lo = 0, hi = data.times.length - 1, k = -1;
      while (lo <= hi) {
        var mid = (lo + hi) >> 1;
        if (data.times[mid] <= t + 1e-6) { k = mid; lo = mid + 1; } else { hi = mid - 1; }
      }
      return k;
    }

    function cell(tr, text) {
      var td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }

    function showBoxes(k) {
      if (k === shownFrame) return;
      shownFrame = k;
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      var boxes = k >= 0 ? data.boxes[k] : [];
      boxes.forEach(function (b, i) {
        var tr = document.createElement("tr");
        cell(tr, String(i + 1));
        ["x1", "y1", "x2", "y2"].forEach(function (c) { cell(tr, Math.round(b[c]).toString()); });
        cell(tr, b.score.toFixed(2));
        cell(tr, b.label === undefined ? "" : b.label);
        tbody.appendChild(tr);
      });
      noBoxes.hidden = boxes.length > 0;
    }

    function update(t) {
      var x = x0 + Math.min(Math.max(t / duration, 0), 1) * width;
      cursor.setAttribute("x1", x.toFixed(2));
      cursor.setAttribute("x2", x.toFixed(2));
      clock.textContent = fmtTime(t);
      showBoxes(frameAt(t));
    }

    hit.addEventListener("click", function (e) {
      var pt = svg.createSVGPoint();
      pt.x = e.clientX;
      pt.y = e.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      var t = Math.min(Math.max((p.x - x0) / width, 0), 1) * duration;
      if (video) {
        var end = isFinite(video.duration) ? video.duration : duration;
        video.currentTime = Math.min(t, Math.max(end - 1e-3, 0));
      }
      update(t);
    });
    if (video) {
      video.addEventListener("timeupdate", function () { update(video.currentTime); });
      video.addEventListener("seeked", function () { update(video.currentTime); });
      video.addEventListener("error", function () {
        var msg = document.getElementById("video-error");
        msg.textContent = "This browser cannot play the overlay video (H.264 in MP4); open the file with a video player instead.";
        msg.hidden = false;
      });
    }
    update(0);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("videos");
    if (table) initIndex(table);
    var svg = document.getElementById("timeline");
    var block = document.getElementById("video-data");
    if (svg && block) initVideo(svg, JSON.parse(block.textContent));
  });
})();
