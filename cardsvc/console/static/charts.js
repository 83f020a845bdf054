// ECharts, served by cardsvc itself (/console/static/echarts.min.js, from the echarts npm
// package). Loaded once as a classic script; when the service has no copy, the pages say so.
import { h } from "./ui.js";
import { t } from "./i18n.js";

let loading = null;

export function loadECharts() {
  if (window.echarts) return Promise.resolve(window.echarts);
  if (!loading) {
    loading = new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = "/console/static/echarts.min.js";
      script.onload = () => resolve(window.echarts || null);
      script.onerror = () => resolve(null);
      document.head.append(script);
    });
  }
  return loading;
}

// A chart box with a title; draws `option` into it, or the "charts unavailable" message.
export function chart(titleKey, testid, option) {
  const box = h("div", { class: "chart", "data-testid": testid });
  const wrap = h("figure", { class: "chart-card" }, h("figcaption", {}, t(titleKey)), box);
  loadECharts().then((echarts) => {
    if (!echarts) {
      box.classList.add("chart-missing");
      box.append(h("p", { class: "notice warn", "data-testid": "charts-unavailable" }, t("charts.unavailable")));
      return;
    }
    const instance = echarts.init(box, null, { renderer: "canvas" });
    instance.setOption({ animation: false, tooltip: { trigger: "axis" }, ...option });
    new ResizeObserver(() => instance.resize()).observe(box);
  });
  return wrap;
}

export function barOption(categories, series, { stack = false, yuanAxis = false } = {}) {
  return {
    legend: { top: 0 },
    grid: { left: 60, right: 20, top: 40, bottom: 40, containLabel: true },
    xAxis: { type: "category", data: categories },
    yAxis: { type: "value", name: yuanAxis ? t("charts.yuan") : "" },
    series: series.map((s) => ({ type: "bar", stack: stack ? "all" : undefined, ...s })),
  };
}
