// The console's own script: action forms that open on their button, and the dashboard's charts,
// drawn with Chart.js from /ops/charts.json and redrawn in place every few seconds.
"use strict";

document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-opens]");
  if (opener) {
    const form = document.getElementById(opener.dataset.opens);
    document.querySelectorAll("form.action[id]").forEach((f) => { if (f !== form) f.hidden = true; });
    document.querySelectorAll("[data-opens]").forEach((b) => b.setAttribute("aria-expanded", String(b === opener)));
    form.hidden = false;
    const first = form.querySelector("input:not([type=hidden]), textarea");
    if (first) first.focus();
    return;
  }
  const closer = event.target.closest("[data-closes]");
  if (closer) {
    document.getElementById(closer.dataset.closes).hidden = true;
    const button = document.querySelector(`[data-opens="${closer.dataset.closes}"]`);
    if (button) { button.setAttribute("aria-expanded", "false"); button.focus(); }
  }
});

// Escape closes an open action form and gives the focus back to its button.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const form = event.target.closest && event.target.closest("form.action[id]");
  if (!form || form.hidden) return;
  form.hidden = true;
  const button = document.querySelector(`[data-opens="${form.id}"]`);
  if (button) { button.setAttribute("aria-expanded", "false"); button.focus(); }
});

const STATUS_COLOURS = {
  submitted: "#8aa4c8", confirmed: "#5b8def", paid: "#2e9d5b", picking: "#c7a232", shipped: "#d97f2b",
  in_transit: "#b565c7", delivered: "#1f7a44", cancelled: "#c0392b", return_requested: "#7f8c8d", returned: "#34495e",
};

function drawCharts(root) {
  const labels = JSON.parse(root.dataset.labels);
  const common = { animation: false, responsive: true, maintainAspectRatio: false };
  const status = new Chart(document.getElementById("chart-status"), {
    type: "bar",
    data: { labels: [], datasets: [{ label: labels.orders, data: [], backgroundColor: [] }] },
    options: { ...common, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  const throughput = new Chart(document.getElementById("chart-throughput"), {
    type: "line",
    data: { labels: [], datasets: [
      { label: labels.placed, data: [], borderColor: "#5b8def", backgroundColor: "#5b8def", tension: 0.2, pointRadius: 0 },
      { label: labels.paid, data: [], borderColor: "#2e9d5b", backgroundColor: "#2e9d5b", tension: 0.2, pointRadius: 0 },
    ] },
    options: { ...common, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  const latency = new Chart(document.getElementById("chart-latency"), {
    type: "line",
    data: { labels: [], datasets: [
      { label: labels.mean, data: [], borderColor: "#d97f2b", backgroundColor: "#d97f2b", spanGaps: true, pointRadius: 2 },
      { label: labels.worst, data: [], borderColor: "#c0392b", backgroundColor: "#c0392b", spanGaps: true, pointRadius: 2 },
    ] },
    options: { ...common, scales: { y: { beginAtZero: true } } },
  });

  async function refresh() {
    const response = await fetch(root.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { window.location.assign("/ops"); return; }
    if (!response.ok) return;
    const d = await response.json();
    const names = Object.keys(d.orders_by_status);
    status.data.labels = names;
    status.data.datasets[0].data = names.map((n) => d.orders_by_status[n]);
    status.data.datasets[0].backgroundColor = names.map((n) => STATUS_COLOURS[n] || "#999");
    throughput.data.labels = d.minutes;
    throughput.data.datasets[0].data = d.placed;
    throughput.data.datasets[1].data = d.paid;
    latency.data.labels = d.minutes;
    latency.data.datasets[0].data = d.latency_mean_s;
    latency.data.datasets[1].data = d.latency_max_s;
    status.update(); throughput.update(); latency.update();
    root.dataset.updatedAt = d.at;
  }
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, Number(root.dataset.every || 5) * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("charts");
  if (root && window.Chart) drawCharts(root);
});
