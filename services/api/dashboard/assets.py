"""The dashboard page's HTML shell, style sheet and refresh script, and a task page's shell (inlined: one
request, no static files to package). `<!--name-->` markers are filled in by services/api/dashboard/page.py
and taskpage.py."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>task-manager dashboard</title><link rel="icon" href="data:,">
<style><!--style--></style>
</head><body>
<header>
<h1>task-manager</h1><span class="version">v<!--version--></span>
<span id="refreshed" class="live" title="refreshes every <!--refresh_s--> s">Updated <!--time--> UTC</span>
<nav><a href="/docs">Swagger UI</a><a href="/redoc">ReDoc</a><a href="/dashboard/data">JSON</a>
<a href="/dashboard/metrics">Prometheus metrics</a><!--signout--></nav>
</header>
<main>
<!--summary-->
<section id="charts"><h2>Last hour</h2><div class="charts"><!--charts--></div></section>
<!--workers-->
<!--gpus-->
<h2>Queues</h2>
<div class="grid"><div class="stack"><!--stages--><!--consumers--></div><!--streams--></div>
<!--tasks-->
<!--search-->
<!--endpoints-->
</main>
<script id="dashboard-spec" type="application/json"><!--spec--></script>
<script><!--script--></script>
</body></html>
"""

TASK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>task-manager <!--title--></title><link rel="icon" href="data:,">
<style><!--style--></style>
</head><body>
<header>
<h1><a href="/dashboard">task-manager</a></h1>
<nav><a href="/dashboard">Dashboard</a><a href="/docs">Swagger UI</a></nav>
</header>
<main><!--body--></main>
</body></html>
"""

STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2933;background:#f4f5f7}
header{display:flex;align-items:baseline;gap:1rem;flex-wrap:wrap;padding:.9rem 2rem;background:#1f2933;color:#f4f5f7}
header h1{font-size:1.3rem;margin:0}
header .version{color:#9aa5b1}
header nav{margin-left:auto;display:flex;gap:1rem;align-items:center}
header nav form{margin:0}header nav button{font:inherit;background:none;border:1px solid currentColor;
border-radius:4px;color:inherit;padding:1px 8px;cursor:pointer}
header a{color:#bcccdc}
#refreshed{font-size:.85rem;padding:.1rem .55rem;border-radius:1rem;background:#2f3e4c}
#refreshed.live::before{content:"";display:inline-block;width:.5rem;height:.5rem;border-radius:50%;
 background:#3ebd93;margin-right:.4rem}
#refreshed.stale{background:#a61b1b}
main{padding:1rem 2rem 2rem;max-width:1500px}
h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
h3{font-size:.95rem;margin:0 0 .4rem;color:#52606d}
section>.body{overflow-x:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem;align-items:start}
.stack{display:grid;gap:1rem}
.grid td,.grid th{padding:.3rem .45rem}.grid th{letter-spacing:0}
.grid section{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:.7rem}
#summary .body{display:flex;gap:1rem;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:.6rem 1.2rem;min-width:9rem}
.card b{display:block;font-size:1.5rem}
.card span{color:#616e7c;font-size:.85rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e4e7eb}
td,th{padding:.35rem .6rem;text-align:left;border-bottom:1px solid #e4e7eb;white-space:nowrap}
th{background:#f0f2f5;font-weight:600;font-size:.8rem;color:#52606d;text-transform:uppercase;letter-spacing:.02em}
tbody tr:hover{background:#f8fafc}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f0f2f5;padding:.05rem .3rem;border-radius:3px}
.empty{color:#7b8794;margin:.3rem 0}
.state{font-size:.75rem;font-weight:600;padding:.1rem .5rem;border-radius:1rem;background:#e4e7eb;color:#323f4b}
.s-SUCCESS{background:#c6f7e2;color:#014d40}.s-FAILURE{background:#ffe3e3;color:#8a041a}
.s-TIMEOUT{background:#fff3c4;color:#8d2b0b}.s-RECEIVED,.s-STARTED{background:#dceefb;color:#0b4f71}
.bar{display:inline-block;width:80px;height:8px;background:#e4e7eb;border-radius:4px;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:#2186eb}
header h1 a{color:inherit;text-decoration:none}
#facts{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem;background:#fff;border:1px solid #e4e7eb;
 border-radius:6px;padding:.8rem 1.2rem;margin:0}
#facts dt{color:#616e7c;font-weight:600}#facts dd{margin:0;overflow-wrap:anywhere}
.error{color:#8a041a;white-space:normal}
#previews{display:flex;gap:1rem;flex-wrap:wrap}
figure{margin:0;background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:.5rem}
figure img{display:block;max-width:320px;max-height:240px;image-rendering:auto}
figcaption{color:#616e7c;font-size:.85rem;margin-top:.3rem}
form.action{display:inline-block;margin:0 0 .8rem}form.action button{font:inherit;padding:.25rem .9rem;cursor:pointer}
#search{display:flex;gap:1rem;align-items:center;flex-wrap:wrap;margin:1.4rem 0 .5rem}
#search input,#search select,#search button{font:inherit;padding:.2rem .4rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
.chart svg{display:block;width:100%;height:auto}
.chart svg text{font-size:10px;fill:#616e7c}.chart svg .grid{stroke:#e4e7eb}.chart svg .axis{stroke:#9aa5b1}
.chart svg path{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}
.legend{display:flex;gap:.9rem;flex-wrap:wrap;font-size:.8rem;color:#52606d}
.legend i{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}
#search fieldset{border:0;padding:0;margin:0}#search fieldset label{margin-right:.6rem}
#search legend{float:left;padding:0;margin-right:.6rem}
"""

# Mirrors page.cell and render_section; keep the two in step.
SCRIPT = """
(() => {
  const spec = JSON.parse(document.getElementById("dashboard-spec").textContent);
  const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"};
  const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ESC[c]);
  const pad = (n) => String(n).padStart(2, "0");
  function age(s) {
    if (s < 1) return Math.floor(s * 1000) + "ms";
    const w = Math.floor(s);
    if (w < 60) return w + "s";
    if (w < 3600) return Math.floor(w / 60) + "m" + pad(w % 60) + "s";
    if (w < 86400) return Math.floor(w / 3600) + "h" + pad(Math.floor((w % 3600) / 60)) + "m";
    return Math.floor(w / 86400) + "d" + pad(Math.floor((w % 86400) / 3600)) + "h";
  }
  function size(v) {
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (v < 1024 || unit === "GiB") return unit === "B" ? v.toFixed(0) + " B" : v.toFixed(1) + " " + unit;
      v /= 1024;
    }
  }
  const blank = (v) => v === null || v === undefined || v === "" ||
    (typeof v === "object" && Object.keys(v).length === 0);
  function cell(fmt, v, row) {
    if (blank(v)) return fmt === "ids" ? "-" : "";
    const t = esc(v);
    switch (fmt) {
      case "code": return `<code>${t}</code>`;
      case "task": return `<a href='/dashboard/tasks/${encodeURIComponent(v)}'><code>${t}</code></a>`;
      case "age": return age(v);
      case "ago": return age(v) + " ago";
      case "ids": return v.map((id) => `<code title='${esc(id)}'>${esc(id.slice(0, 8))}</code>`).join(" ");
      case "counters": return esc(Object.entries(v).filter(([, n]) => n)
        .map(([k, n]) => `${n} ${k.replace(/_/g, " ")}`).join(", ")) || "0";
      case "link": return `<a href='${t}'>${t}</a>`;
      case "state": return `<span class='state s-${t}'>${t}</span>`;
      case "progress": { const p = Math.round(v * 100);
        return `<span class='bar'><i style='width:${p}%'></i></span> ${p}%`; }
      case "memory": return `${v} / ${row.memory_total_mb ?? "?"} MB`;
      case "bytes": return size(v);
      case "time": return `<span title='${t}'>${esc(String(v).slice(11, 19))}</span>`;
      default: return t;
    }
  }
  const busy = (r) => r.pending || r.ack_pending || r.redelivered;
  function render(s, data) {
    const found = s.rows.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), data);
    if (s.cards) return s.columns.map(([k, title, fmt]) =>
      `<div class='card'><b>${cell(fmt, (found || {})[k], found || {}) || "-"}</b><span>${esc(title)}</span></div>`
    ).join("");
    const rows = (found || []).filter((r) => !s.busy_only || busy(r));
    if (!rows.length) return `<p class='empty'>${esc(s.empty)}</p>`;
    const head = s.columns.map(([, title]) => `<th>${esc(title)}</th>`).join("");
    const body = rows.map((r) => "<tr>" + s.columns.map(([k, , fmt]) => `<td>${cell(fmt, r[k], r)}</td>`).join("")
      + "</tr>").join("");
    return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
  }
  const stamp = document.getElementById("refreshed");
  let refreshes = 0;
  async function refresh() {
    try {
      const response = await fetch(spec.url, {headers: {Accept: "application/json"}, cache: "no-store"});
      if (response.status === 401) { location.reload(); return; }  // session ended: the sign-in page
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      for (const s of spec.sections) document.querySelector(`#${s.id} > .body`).innerHTML = render(s, data);
      stamp.textContent = "Updated " + data.generated_at.slice(11, 19) + " UTC";
      stamp.className = "live";
      document.body.dataset.refreshes = String(++refreshes);
    } catch (err) {
      stamp.textContent = "Refresh failed (" + err.message + "), retrying";
      stamp.className = "stale";
    }
    setTimeout(refresh, spec.refresh_ms);
  }
  setTimeout(refresh, spec.refresh_ms);
  const charts = document.querySelector("#charts > .charts");
  let redraws = 0;
  async function redraw() {
    try {
      const response = await fetch(spec.charts_url, {cache: "no-store"});
      if (response.status === 401) { location.reload(); return; }
      if (response.ok) {
        charts.innerHTML = await response.text();
        document.body.dataset.chartRedraws = String(++redraws);
      }
    } catch (err) { /* the data refresh above shows that the server is away */ }
    setTimeout(redraw, spec.charts_refresh_ms);
  }
  setTimeout(redraw, spec.charts_refresh_ms);
})();
"""
