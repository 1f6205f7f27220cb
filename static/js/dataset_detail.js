// A data set's page: draw its figures (built server-side by training/web/charts/datasets.py).
const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

for (const target of document.querySelectorAll(".chart[data-figure]")) {
  const source = document.getElementById(target.dataset.figure);
  if (source && window.Plotly) {
    const figure = JSON.parse(source.textContent);
    window.Plotly.newPlot(target, figure.data, figure.layout, config);
  }
}
