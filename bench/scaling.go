package main

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// The scaling scenarios show how cost grows: lbpool beside reverse_proxy,
// small GETs, on pools of 3 to 3,000 backends under the throughput
// scenario's 64 clients, and on 3 backends under 64 to 5,000 clients. The
// backends are three processes (the first three backends) with the rest as
// extra listeners in them, each process on a loopback address of its own;
// with more backends than clients most of them are idle at any moment. Each
// point is a scenario of its own (scaling_b<backends>, scaling_c<clients>),
// run like the others; this file gathers their medians into one table and
// the chart's curves.

// scalingConfigs are the configurations whose curves the report draws.
var scalingConfigs = []string{"lbpool", baseline}

// scalingFigure is one configuration's medians at one point.
type scalingFigure struct {
	Config        string   `json:"config"`
	LBCPUPerReqUs *float64 `json:"lb_cpu_per_request_us"`
	PeakRSSMiB    *float64 `json:"peak_rss_mib"`
	P99ms         *float64 `json:"p99_ms"`
	// LBCPUToFirst is the CPU per request over its own at the axis's
	// first point, paired within each repeat, then the median.
	LBCPUToFirst *float64 `json:"lb_cpu_to_first_point"`
}

// scalingPoint is one point of a scaling axis.
type scalingPoint struct {
	Scenario string          `json:"scenario"`
	Axis     string          `json:"axis"` // backends or clients
	Backends int             `json:"backends"`
	Clients  int             `json:"clients"`
	Figures  []scalingFigure `json:"figures"`
	// lbpool ÷ reverse_proxy, paired within each repeat, then the median
	LBCPURatio *float64 `json:"lb_cpu_ratio"`
	RSSRatio   *float64 `json:"peak_rss_ratio"`
}

// scalingAxis is the scenarios along one axis, in order: the clients axis
// starts at the backends axis's point with numBackends backends.
func (res *results) scalingAxis(axis string) []scenario {
	var out []scenario
	for _, sc := range res.Scenarios {
		if sc.Scaling == "backends" && sc.backends() == numBackends && axis == "clients" {
			out = append(out, sc)
		}
	}
	for _, sc := range res.Scenarios {
		if sc.Scaling == axis {
			out = append(out, sc)
		}
	}
	if axis == "clients" && len(out) == 1 {
		return nil
	}
	return out
}

// medianOver is the median of a figure of a configuration's runs in the
// scenario, or nil.
func (res *results) medianOver(sc scenario, config string, f func(r *runRecord) float64) *float64 {
	var vals []float64
	for rep := 1; rep <= res.Options.Repeats; rep++ {
		if r := res.find(sc.Name, rep, config); r != nil {
			if v := f(r); !math.IsNaN(v) {
				vals = append(vals, v)
			}
		}
	}
	if len(vals) == 0 {
		return nil
	}
	return ptr(median(vals))
}

// scalingPoints gathers the scaling scenarios' figures, axis by axis.
func (res *results) scalingPoints() []scalingPoint {
	var out []scalingPoint
	for _, axis := range []string{"backends", "clients"} {
		scs := res.scalingAxis(axis)
		for _, sc := range scs {
			p := scalingPoint{Scenario: sc.Name, Axis: axis, Backends: sc.backends(), Clients: sc.Conns}
			for _, c := range scalingConfigs {
				if !slices.Contains(sc.Configs, c) {
					continue
				}
				first := scs[0]
				p.Figures = append(p.Figures, scalingFigure{Config: c,
					LBCPUPerReqUs: res.medianOver(sc, c, func(r *runRecord) float64 { return r.LBCPUPerReqUs }),
					PeakRSSMiB:    res.medianOver(sc, c, func(r *runRecord) float64 { return float64(r.LBPeakRSSKiB) / 1024 }),
					P99ms:         res.medianOver(sc, c, func(r *runRecord) float64 { return r.P99us / 1e3 }),
					LBCPUToFirst: res.medianOver(sc, c, func(r *runRecord) float64 {
						f := res.find(first.Name, r.Repeat, c)
						if f == nil || f.LBCPUPerReqUs <= 0 {
							return math.NaN()
						}
						return r.LBCPUPerReqUs / f.LBCPUPerReqUs
					}),
				})
			}
			p.LBCPURatio = res.pairedRatio(sc, "lbpool", baseline, metricLBCPU).Median
			p.RSSRatio = res.pairedRatio(sc, "lbpool", baseline, metricPeakRSS).Median
			out = append(out, p)
		}
	}
	return out
}

// scalingTable writes the scaling points, one line each.
func (res *results) scalingTable(w io.Writer) {
	if len(res.Scaling) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "== scaling: how cost grows with backends and with clients (medians over the repeats; ratios paired within each repeat;")
	fmt.Fprintln(w, "   \"÷ first\" is the CPU per request over the same configuration's at the axis's first point)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "axis\tbackends\tclients\tlbpool µs/req\t÷ first\trp µs/req\t÷ first\tlbpool ÷ rp\tlbpool peak RSS MiB\trp peak RSS MiB\tlbpool ÷ rp\tlbpool p99 ms\trp p99 ms\t")
	for _, p := range res.Scaling {
		line := fmt.Sprintf("%s\t%d\t%d\t", p.Axis, p.Backends, p.Clients)
		fig := func(c string) scalingFigure {
			for _, f := range p.Figures {
				if f.Config == c {
					return f
				}
			}
			return scalingFigure{}
		}
		l, r := fig("lbpool"), fig(baseline)
		line += fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t", fmtNum(l.LBCPUPerReqUs, 1), fmtRatio(l.LBCPUToFirst), fmtNum(r.LBCPUPerReqUs, 1),
			fmtRatio(r.LBCPUToFirst), fmtRatio(p.LBCPURatio))
		line += fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t", fmtNum(l.PeakRSSMiB, 0), fmtNum(r.PeakRSSMiB, 0), fmtRatio(p.RSSRatio),
			fmtNum(l.P99ms, 1), fmtNum(r.P99ms, 1))
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

func fmtNum(v *float64, decimals int) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.*f", decimals, *v)
}

// scalingRows are the chart's rows of curves: per axis, CPU per request
// and peak RSS.
func (res *results) scalingRows() []chartRow {
	var rows []chartRow
	for _, axis := range []string{"backends", "clients"} {
		scs := res.scalingAxis(axis)
		if len(scs) < 2 {
			continue
		}
		title := fmt.Sprintf("How cost grows with backends (%d keep-alive clients, small GETs)", scs[0].Conns)
		if axis == "clients" {
			title = fmt.Sprintf("How cost grows with clients (%d backends, small GETs)", numBackends)
		}
		row := chartRow{title: title}
		for _, m := range []metric{metricLBCPU, metricPeakRSS} {
			name := "LB CPU per request, µs"
			if m.Name == metricPeakRSS.Name {
				name = "Caddy's peak RSS, MiB"
			}
			row.cells = append(row.cells, chartCell{p: panel{name + " by " + axis, m, fmtSig}, curve: scs})
		}
		rows = append(rows, row)
	}
	return rows
}

// drawCurves draws one metric over the points of an axis, a line per
// configuration through its medians and a dot for every repeat, with the
// panel's top-left corner at x, y. The points are evenly spaced, labelled
// with their backends or clients.
func (res *results) drawCurves(b *bytes.Buffer, scs []scenario, p panel, x, y int) {
	top := 0.0
	for _, sc := range scs {
		for _, c := range scalingConfigs {
			for rep := 1; rep <= res.Options.Repeats; rep++ {
				if r := res.find(sc.Name, rep, c); r != nil {
					if v := p.metric.value(r, -1); !math.IsNaN(v) {
						top = max(top, v)
					}
				}
			}
		}
	}
	plotTop, plotLeft, plotW := y+22, x+44, panelWidth-60
	yOf := p.frame(b, top, x, y, plotW)
	xOf := func(i int) float64 {
		return float64(plotLeft) + 10 + float64(i)*float64(plotW-20)/float64(max(len(scs)-1, 1))
	}
	axis := scs[len(scs)-1].Scaling
	for i, sc := range scs {
		label := sc.backends()
		if axis == "clients" {
			label = sc.Conns
		}
		text(b, int(xOf(i)), plotTop+plotHeight+15, "middle", 10, "normal", fmt.Sprintf("%d", label))
	}
	text(b, plotLeft+plotW/2, plotTop+plotHeight+30, "middle", 10, "normal", axis)
	for _, c := range scalingConfigs {
		var pts []string
		for i, sc := range scs {
			var vals []float64
			for rep := 1; rep <= res.Options.Repeats; rep++ {
				if r := res.find(sc.Name, rep, c); r != nil {
					if v := p.metric.value(r, -1); !math.IsNaN(v) {
						vals = append(vals, v)
						fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="2.2" fill="%s" fill-opacity="0.6"/>`+"\n", xOf(i), yOf(v), configColors[c])
					}
				}
			}
			if len(vals) > 0 {
				m := median(vals)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(i), yOf(m)))
				cfg, _ := configByName(c)
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s: %s</title></circle>`+"\n",
					xOf(i), yOf(m), configColors[c], html.EscapeString(cfg.Label), p.format(m))
			}
		}
		if len(pts) > 1 {
			fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), configColors[c])
		}
		if last := scs[len(scs)-1]; len(pts) > 0 {
			if m := res.medianOver(last, c, func(r *runRecord) float64 { return p.metric.value(r, -1) }); m != nil {
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="start" font-size="10" font-weight="bold" fill="%s">%s</text>`+"\n",
					xOf(len(scs)-1)+6, yOf(*m)+4, configColors[c], html.EscapeString(p.format(*m)))
			}
		}
	}
}
