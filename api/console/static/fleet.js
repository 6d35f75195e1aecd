// A terminal's page: its signal and temperature over the last day, from the telemetry API, drawn
// with the vendored uPlot (two scales: dBm on the left, °C on the right).
(() => {
  "use strict";
  const box = document.getElementById("telemetry-chart");
  if (!box) return;
  const T = window.cunxiang.labels;
  const DAY_S = 24 * 3600;
  const end = Date.now() / 1000;
  const since = new Date((end - DAY_S) * 1000).toISOString();
  const path = `/api/v1/terminals/${encodeURIComponent(box.dataset.terminal)}/telemetry?since=${encodeURIComponent(since)}`;

  const draw = (points) => {
    document.getElementById("telemetry-empty").hidden = points.length > 0;
    const data = [
      points.map((p) => Date.parse(p.at) / 1000),
      points.map((p) => p.signal_dbm),
      points.map((p) => p.temperature_c),
    ];
    const options = {
      width: box.clientWidth,
      height: 240,
      // The whole day, however few samples there are, so gaps (a terminal away) show as gaps.
      scales: { x: { time: true, range: [end - DAY_S, end] }, dbm: { auto: true }, c: { auto: true } },
      series: [
        {},
        { label: T.signal_dbm, scale: "dbm", stroke: "#0b5cad", width: 2, points: { show: true } },
        { label: T.temperature_c, scale: "c", stroke: "#b3261e", width: 2, points: { show: true } },
      ],
      axes: [{}, { scale: "dbm", label: "dBm" }, { scale: "c", label: "°C", side: 1, grid: { show: false } }],
    };
    new uPlot(options, data, box);
  };

  window.cunxiang.api("GET", path).then(draw, (failure) => {
    const empty = document.getElementById("telemetry-empty");
    empty.textContent = `${T.error}: ${failure.message}`;
    empty.hidden = false;
  });
})();
