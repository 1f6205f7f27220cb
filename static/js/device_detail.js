// Draw the device page's Plotly figures (built server-side by devices/charts.py) with the local plotly.js.

const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

for (const [elementId, dataId] of [["battery-chart", "battery-figure"], ["availability-chart", "availability-figure"]]) {
  const target = document.getElementById(elementId);
  const source = document.getElementById(dataId);
  if (target && source && window.Plotly) {
    const figure = JSON.parse(source.textContent);
    window.Plotly.newPlot(target, figure.data, figure.layout, config);
  }
}

// Figures of panels other apps add (devices/extensions.py): <div class="chart" data-figure="<json_script id>">.
for (const target of document.querySelectorAll(".chart[data-figure]")) {
  const source = document.getElementById(target.dataset.figure);
  if (source && window.Plotly) {
    const figure = JSON.parse(source.textContent);
    window.Plotly.newPlot(target, figure.data, figure.layout, config);
  }
}

document.getElementById("hours")?.addEventListener("change", (event) => event.target.form.submit());
