// Draws every <script type="application/json" class="vl-spec" data-target="ID"> with vega-embed
// (SVG renderer, so a test or a screenshot sees real marks). Views are kept in
// window.snapverViews[ID]; window.snapverChartsDone counts the charts drawn, or failed.
(function () {
  window.snapverViews = {};
  window.snapverChartsDone = 0;
  window.snapverChartErrors = [];
  document.querySelectorAll('script.vl-spec').forEach(function (el) {
    var id = el.dataset.target;
    vegaEmbed('#' + id, JSON.parse(el.textContent), {renderer: 'svg', actions: false})
      .then(function (result) { window.snapverViews[id] = result.view; })
      .catch(function (err) {
        window.snapverChartErrors.push(String(err));
        document.getElementById(id).textContent = 'chart failed: ' + err;
      })
      .finally(function () { window.snapverChartsDone += 1; });
  });
})();
