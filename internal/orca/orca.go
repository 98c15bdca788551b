// Package orca reads the load reports backends attach to their responses in
// the ORCA format (Open Request Cost Aggregation): the HTTP response header
// `endpoint-load-metrics` in its TEXT, JSON and BIN forms, gRPC's
// `endpoint-load-metrics-bin` trailer, and the same field names in a JSON
// object (a backend's stats endpoint). It knows only the format: what the
// figures mean for a pick is the caller's business.
//
// Reading is bounded (MaxValueLen bytes, MaxFields fields) and strict about
// numbers: a figure that is not a finite, non-negative number makes the
// whole report bad, so a broken backend cannot steer with half a report.
package orca

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	v3orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	"google.golang.org/protobuf/proto"
)

// Header and trailer names of the reports.
const (
	Header     = "Endpoint-Load-Metrics"     // TEXT, JSON or BIN, per HTTP response
	BinTrailer = "Endpoint-Load-Metrics-Bin" // a serialised OrcaLoadReport, base64, per gRPC call
)

// Bounds of one report.
const (
	MaxValueLen = 4096 // bytes of a header or trailer value, or of a JSON object's named_metrics
	MaxFields   = 64   // fields of a TEXT report, or named metrics of any form
)

// Utilization names a metric may take besides a named metric's.
const (
	ApplicationUtilization = "application_utilization"
	CPUUtilization         = "cpu_utilization"
	MemUtilization         = "mem_utilization"
)

// Report is the part of one load report a balancer uses. A field the
// report did not carry is zero (and Has* false where zero means something).
type Report struct {
	CPU float64 // cpu_utilization
	Mem float64 // mem_utilization
	App float64 // application_utilization

	RPS    float64 // rps_fractional (or the older whole rps)
	EPS    float64 // eps: errors per second
	HasRPS bool
	HasEPS bool

	Named    float64 // the named metric asked for, when the report has it
	HasNamed bool
}

// Utilization is the figure a balancer divides by: the named metric when
// metric names one, the utilization metric names, or by default
// application_utilization when above zero, else cpu_utilization (as gRFC
// A58 reads it). Zero means the report says nothing usable.
func (r *Report) Utilization(metric string) float64 {
	switch metric {
	case "":
		if r.App > 0 {
			return r.App
		}
		return r.CPU
	case ApplicationUtilization:
		return r.App
	case CPUUtilization:
		return r.CPU
	case MemUtilization:
		return r.Mem
	}
	return r.Named
}

// NamedKey is the key in named_metrics that metric refers to, or "" when
// metric is one of the utilizations (or empty): `named_metrics.queue` and
// `queue` both name the metric queue.
func NamedKey(metric string) string {
	switch metric {
	case "", ApplicationUtilization, CPUUtilization, MemUtilization:
		return ""
	}
	return strings.TrimPrefix(metric, "named_metrics.")
}

var (
	errTooLong   = fmt.Errorf("report longer than %d bytes", MaxValueLen)
	errTooMany   = fmt.Errorf("report with more than %d fields", MaxFields)
	errNoPrefix  = errors.New("report is neither TEXT, JSON nor BIN")
	errBadNumber = errors.New("not a finite, non-negative number")
)

// ParseHeader reads an endpoint-load-metrics header value: `TEXT k=v, ...`,
// `JSON {...}` or `BIN <base64>`. named is the named metric to keep (see
// NamedKey), "" for none.
func ParseHeader(v, named string) (Report, error) {
	if len(v) > MaxValueLen {
		return Report{}, errTooLong
	}
	v = strings.TrimSpace(v)
	form, rest, _ := strings.Cut(v, " ")
	switch form {
	case "TEXT":
		return parseText(rest, named)
	case "JSON":
		return ParseJSON([]byte(rest), named)
	case "BIN":
		return ParseBinary(rest, named)
	}
	return Report{}, errNoPrefix
}

// parseText reads `cpu_utilization=0.3, rps_fractional=120,
// named_metrics.queue=4`. Unknown keys are skipped (later versions may add
// some); a key without a value or a bad number spoils the report. It does
// not allocate for a good report.
func parseText(s, named string) (Report, error) {
	var r Report
	fields := 0
	for s != "" {
		var field string
		field, s, _ = strings.Cut(s, ",")
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		if fields++; fields > MaxFields {
			return Report{}, errTooMany
		}
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return Report{}, fmt.Errorf("field %.40q is not key=value", field)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !good(f) {
			return Report{}, fmt.Errorf("%.40s: %w", k, errBadNumber)
		}
		r.set(strings.TrimSpace(k), f, named)
	}
	return r, nil
}

// set files one field under its key; unknown keys are dropped.
func (r *Report) set(k string, f float64, named string) {
	switch k {
	case CPUUtilization:
		r.CPU = f
	case MemUtilization:
		r.Mem = f
	case ApplicationUtilization:
		r.App = f
	case "rps_fractional":
		r.RPS, r.HasRPS = f, true
	case "eps":
		r.EPS, r.HasEPS = f, true
	default:
		if named != "" && strings.HasPrefix(k, "named_metrics.") && k[len("named_metrics."):] == named {
			r.Named, r.HasNamed = f, true
		}
	}
}

// jsonReport holds the ORCA fields in JSON under both spellings protobuf's
// JSON mapping allows (the proto's names and lowerCamelCase).
type jsonReport struct {
	CPU    *float64           `json:"cpu_utilization"`
	CPU2   *float64           `json:"cpuUtilization"`
	Mem    *float64           `json:"mem_utilization"`
	Mem2   *float64           `json:"memUtilization"`
	App    *float64           `json:"application_utilization"`
	App2   *float64           `json:"applicationUtilization"`
	RPS    *float64           `json:"rps_fractional"`
	RPS2   *float64           `json:"rpsFractional"`
	EPS    *float64           `json:"eps"`
	Named1 map[string]float64 `json:"named_metrics"`
	Named2 map[string]float64 `json:"namedMetrics"`
}

// ParseJSON reads a JSON object with the ORCA field names: the JSON form
// of the header, or a stats endpoint's answer (other fields are skipped).
// A body without any of the fields is an empty report, not an error.
func ParseJSON(body []byte, named string) (Report, error) {
	var j jsonReport
	if err := json.Unmarshal(body, &j); err != nil {
		return Report{}, fmt.Errorf("JSON report: %w", err)
	}
	var r Report
	for _, f := range []struct {
		dst  *float64
		has  *bool
		a, b *float64
	}{
		{&r.CPU, nil, j.CPU, j.CPU2},
		{&r.Mem, nil, j.Mem, j.Mem2},
		{&r.App, nil, j.App, j.App2},
		{&r.RPS, &r.HasRPS, j.RPS, j.RPS2},
		{&r.EPS, &r.HasEPS, j.EPS, nil},
	} {
		v := f.a
		if v == nil {
			v = f.b
		}
		if v == nil {
			continue
		}
		if !good(*v) {
			return Report{}, errBadNumber
		}
		*f.dst = *v
		if f.has != nil {
			*f.has = true
		}
	}
	for _, m := range []map[string]float64{j.Named1, j.Named2} {
		if len(m) > MaxFields {
			return Report{}, errTooMany
		}
		if v, ok := m[named]; ok && named != "" {
			if !good(v) {
				return Report{}, errBadNumber
			}
			r.Named, r.HasNamed = v, true
		}
	}
	return r, nil
}

// ParseBinary reads a base64 serialised xds.data.orca.v3.OrcaLoadReport:
// gRPC's endpoint-load-metrics-bin trailer (unpadded base64, as gRPC
// encodes binary metadata) or the BIN form of the header (padded).
func ParseBinary(v, named string) (Report, error) {
	if len(v) > MaxValueLen {
		return Report{}, errTooLong
	}
	v = strings.TrimRight(strings.TrimSpace(v), "=")
	raw, err := base64.RawStdEncoding.DecodeString(v)
	if err != nil {
		return Report{}, fmt.Errorf("binary report: %w", err)
	}
	var m v3orcapb.OrcaLoadReport
	if err := proto.Unmarshal(raw, &m); err != nil {
		return Report{}, fmt.Errorf("binary report: %w", err)
	}
	if len(m.GetNamedMetrics())+len(m.GetUtilization())+len(m.GetRequestCost()) > MaxFields {
		return Report{}, errTooMany
	}
	r := Report{CPU: m.GetCpuUtilization(), Mem: m.GetMemUtilization(), App: m.GetApplicationUtilization(),
		RPS: m.GetRpsFractional(), EPS: m.GetEps()}
	if r.RPS == 0 && m.GetRps() > 0 {
		r.RPS = float64(m.GetRps())
	}
	r.HasRPS, r.HasEPS = r.RPS > 0, r.EPS > 0
	if v, ok := m.GetNamedMetrics()[named]; ok && named != "" {
		r.Named, r.HasNamed = v, true
	}
	for _, f := range [...]float64{r.CPU, r.Mem, r.App, r.RPS, r.EPS, r.Named} {
		if !good(f) {
			return Report{}, errBadNumber
		}
	}
	return r, nil
}

// good accepts a figure a report may carry: finite and not negative.
func good(f float64) bool {
	return f >= 0 && !math.IsInf(f, 1) // NaN fails f >= 0
}
