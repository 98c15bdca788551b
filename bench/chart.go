package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The chart is a plain SVG written here, so the harness needs nothing else:
// one row of panels for each of the throughput and quality scenarios, then
// rows of one panel per figure of the other workloads; one bar per
// configuration at the median of the repeats, a dot for every repeat.

const (
	chartWidth  = 960
	panelWidth  = 300
	panelGap    = 20
	plotHeight  = 170
	rowHeight   = 290
	chartMargin = 20
)

// configColors are fixed per configuration so the panels read alike.
var configColors = map[string]string{
	"lbpool":            "#1f77b4",
	"lbpool_least_time": "#9467bd",
	optionsConfig:       "#17becf",
	"rp_least_conn":     "#ff7f0e",
	"rp_round_robin":    "#8c8c8c",
	"respond":           "#2ca02c",
}

// panel is one metric of one scenario.
type panel struct {
	title  string
	metric metric
	format func(float64) string
}

// tick labels an axis line at v, with the decimals the step needs: 10k,
// 2.5, 20%.
func (p panel) tick(v, step float64) string {
	unit := ""
	switch {
	case p.metric.Name == metricReqPerSec.Name && step >= 1000:
		v, step, unit = v/1000, step/1000, "k"
	case p.metric.Name == metricSlowShare.Name:
		unit = "%"
	}
	if v == 0 {
		return "0"
	}
	decimals := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	return strconv.FormatFloat(v, 'f', decimals, 64) + unit
}

func scenarioPanels(sc scenario) []panel {
	perSec := panel{"req/s (higher is better)", metricReqPerSec, fmtThousands}
	p99 := panel{"p99 latency, ms (lower is better)", metricP99, fmtSig}
	if sc.Slow >= 0 {
		return []panel{
			p99,
			{fmt.Sprintf("b%d's share (slow), %% (lower is better)", sc.Slow+1), metricSlowShare, func(v float64) string { return fmtSig(v) + "%" }},
			perSec,
		}
	}
	return []panel{perSec, p99, {"LB CPU per request, µs (lower is better)", metricLBCPU, fmtSig}}
}

// chartCell is one panel of a row: a figure of a scenario.
type chartCell struct {
	sc scenario
	p  panel
	// curve, if set, makes the cell a line over these scenarios' points
	// (scaling.go) instead of bars of sc.
	curve []scenario
}

// chartRow is a titled row of up to three panels.
type chartRow struct {
	title string
	cells []chartCell
}

// chartRows lays out the chart: the throughput and quality scenarios get a
// row each; the other workloads' figures follow, three to a row.
func (res *results) chartRows() []chartRow {
	var rows []chartRow
	var cells []chartCell
	cpu := func(sc scenario) chartCell {
		return chartCell{sc: sc, p: panel{sc.Name + ": LB CPU per request, µs", metricLBCPU, fmtSig}}
	}
	for _, sc := range res.Scenarios {
		switch {
		case sc.Name == scThroughput || sc.Name == scQuality:
			row := chartRow{title: fmt.Sprintf("Throughput: %d fast backends, %d keep-alive clients", numBackends, sc.Conns)}
			if sc.Slow >= 0 {
				row.title = fmt.Sprintf("Quality: b%d answers after %s, %d keep-alive clients", sc.Slow+1, sc.Delay, sc.Conns)
			}
			for _, p := range scenarioPanels(sc) {
				row.cells = append(row.cells, chartCell{sc: sc, p: p})
			}
			rows = append(rows, row)
		case sc.Websockets > 0:
			cells = append(cells, chartCell{sc: sc, p: panel{fmt.Sprintf("%d websockets: Caddy's RSS per websocket, KiB", sc.Websockets), metricWSRSS, fmtSig}})
		case sc.Name == scClients:
			cells = append(cells, cpu(sc), chartCell{sc: sc, p: panel{sc.Name + ": Caddy's peak RSS, MiB", metricPeakRSS, fmtSig}})
		case sc.Name == scPost || sc.Name == scHTTPS1 || sc.Name == scHTTPS2 || sc.Name == scOptions:
			cells = append(cells, cpu(sc))
		case sc.H2:
			cells = append(cells, cpu(sc), chartCell{sc: sc, p: panel{sc.Name + ": p99 latency, ms", metricP99, fmtSig}})
		}
	}
	for i := 0; i < len(cells); i += 3 {
		title := "Other workloads (lower is better): POST, 2000 clients, HTTPS backends, HTTP/2 clients, options, websockets"
		if i > 0 {
			title = ""
		}
		rows = append(rows, chartRow{title: title, cells: cells[i:min(i+3, len(cells))]})
	}
	return append(rows, res.scalingRows()...)
}

func (res *results) chart() []byte {
	var b bytes.Buffer
	rows := res.chartRows()
	height := 70 + rowHeight*len(rows) + 40
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	m := res.Machine
	text(&b, chartMargin, 26, "start", 17, "bold", "lbpool vs Caddy's reverse_proxy, same binary, same backends")
	runs := fmt.Sprintf("Bars: median of %d repeats; dots: each repeat; rp: reverse_proxy.", res.Options.Repeats)
	if res.Options.Repeats == 1 {
		runs = "One run per configuration; rp: reverse_proxy."
	}
	text(&b, chartMargin, 46, "start", 12, "normal", fmt.Sprintf("%s, %d cores, Caddy %s, %s. %s", m.CPU, m.Cores, m.Caddy, res.Date, runs))
	res.legend(&b, 62)

	y := 80
	for _, row := range rows {
		text(&b, chartMargin, y+16, "start", 14, "bold", row.title)
		for i, c := range row.cells {
			x := chartMargin + i*(panelWidth+panelGap)
			if c.curve != nil {
				res.drawCurves(&b, c.curve, c.p, x, y+30)
			} else {
				res.drawPanel(&b, c.sc, c.p, x, y+30)
			}
		}
		y += rowHeight
	}
	text(&b, chartMargin, height-14, "start", 11, "normal", "Command: "+res.Command+". Latency is raw per request (no coordinated-omission correction).")
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func (res *results) legend(b *bytes.Buffer, y int) {
	x := chartMargin
	for _, c := range allConfigs {
		used := false
		for _, sc := range res.Scenarios {
			for _, n := range sc.Configs {
				used = used || n == c.Name
			}
		}
		if !used {
			continue
		}
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n", x, y-10, configColors[c.Name])
		text(b, x+17, y, "start", 12, "normal", c.Label)
		x += 30 + 7*len(c.Label)
	}
}

// drawPanel draws one metric's bars with the panel's top-left corner at x, y.
func (res *results) drawPanel(b *bytes.Buffer, sc scenario, p panel, x, y int) {
	type bar struct {
		cfg    lbConfig
		vals   []float64
		median float64
	}
	var bars []bar
	top := 0.0
	for _, name := range sc.Configs {
		cfg, _ := configByName(name)
		br := bar{cfg: cfg}
		for rep := 1; rep <= res.Options.Repeats; rep++ {
			if r := res.find(sc.Name, rep, name); r != nil {
				if v := p.metric.value(r, sc.Slow); !math.IsNaN(v) {
					br.vals = append(br.vals, v)
					top = max(top, v)
				}
			}
		}
		if len(br.vals) > 0 {
			br.median = median(br.vals)
		}
		bars = append(bars, br)
	}
	plotTop, plotLeft, plotW := y+22, x+44, panelWidth-50
	yOf := p.frame(b, top, x, y, plotW)

	slot := float64(plotW) / float64(max(len(bars), 1))
	barW := slot * 0.62
	for i, br := range bars {
		cx := float64(plotLeft) + slot*(float64(i)+0.5)
		if len(br.vals) > 0 {
			by := yOf(br.median)
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s</title></rect>`+"\n",
				cx-barW/2, by, barW, float64(plotTop+plotHeight)-by, configColors[br.cfg.Name], html.EscapeString(br.cfg.Label), p.format(br.median))
			for j, v := range br.vals {
				dx := (float64(j) - float64(len(br.vals)-1)/2) * 7
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="2.6" fill="#222" fill-opacity="0.75"/>`+"\n", cx+dx, yOf(v))
			}
			text(b, int(cx), int(yOf(slices.Max(br.vals)))-6, "middle", 11, "bold", p.format(br.median))
		}
		for k, line := range labelLines(br.cfg.Label) {
			text(b, int(cx), plotTop+plotHeight+15+13*k, "middle", 10, "normal", line)
		}
	}
}

// frame draws a panel's title, its value axis up to at least top and its
// grid, with the panel's top-left corner at x, y and a plot plotW wide; it
// returns the plot's y for a value.
func (p panel) frame(b *bytes.Buffer, top float64, x, y, plotW int) func(float64) float64 {
	scaleMax, step := niceScale(top)
	plotTop, plotLeft := y+22, x+44
	yOf := func(v float64) float64 { return float64(plotTop+plotHeight) - v/scaleMax*plotHeight }
	text(b, x+panelWidth/2, y+10, "middle", 12, "bold", p.title)
	for i := 0; float64(i)*step <= scaleMax*1.0001; i++ {
		v := float64(i) * step
		gy := yOf(v)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3"/>`+"\n", plotLeft, gy, plotLeft+plotW, gy)
		text(b, plotLeft-5, int(gy)+4, "end", 10, "normal", p.tick(v, step))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#555"/>`+"\n", plotLeft, plotTop+plotHeight, plotLeft+plotW, plotTop+plotHeight)
	return yOf
}

// labelLines is a configuration's name under its bar, in at most two short
// lines ("rp" stands for reverse_proxy, as the legend says).
func labelLines(label string) []string {
	label = strings.Replace(label, "reverse_proxy", "rp", 1)
	return strings.SplitN(label, " ", 2)
}

// niceScale returns an axis maximum at or above top and a tick step, both
// 1, 2 or 5 times a power of ten.
func niceScale(top float64) (scaleMax, step float64) {
	if top <= 0 || math.IsNaN(top) {
		return 1, 0.25
	}
	raw := top * 1.15 / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	switch f := raw / mag; {
	case f <= 1:
		step = mag
	case f <= 2:
		step = 2 * mag
	case f <= 5:
		step = 5 * mag
	default:
		step = 10 * mag
	}
	return math.Ceil(top*1.15/step) * step, step
}

func text(b *bytes.Buffer, x, y int, anchor string, size int, weight, s string) {
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="%s" font-size="%d" font-weight="%s" fill="#222">%s</text>`+"\n",
		x, y, anchor, size, weight, html.EscapeString(s))
}

// fmtSig prints a value with about three significant digits.
func fmtSig(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// fmtThousands prints req/s as 12.3k.
func fmtThousands(v float64) string {
	if math.Abs(v) >= 1000 {
		return fmtSig(v/1000) + "k"
	}
	return fmtSig(v)
}
