package orca

import (
	"encoding/base64"
	"strings"
	"testing"

	v3orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	"google.golang.org/protobuf/proto"
)

func binary(t *testing.T, m *v3orcapb.OrcaLoadReport, enc *base64.Encoding) string {
	t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeToString(raw)
}

func TestParseHeaderReadsEveryForm(t *testing.T) {
	bin := binary(t, &v3orcapb.OrcaLoadReport{CpuUtilization: 0.3, ApplicationUtilization: 0.45,
		RpsFractional: 120, Eps: 0.5, NamedMetrics: map[string]float64{"queue": 4}}, base64.StdEncoding)
	want := Report{CPU: 0.3, Mem: 0.2, App: 0.45, RPS: 120, EPS: 0.5, HasRPS: true, HasEPS: true, Named: 4, HasNamed: true}
	for _, v := range []string{
		"TEXT cpu_utilization=0.3, mem_utilization=0.2, application_utilization=0.45, rps_fractional=120, eps=0.5, named_metrics.queue=4",
		"  TEXT cpu_utilization = 0.3,mem_utilization=0.2,application_utilization=0.45,rps_fractional=120,eps=0.5,named_metrics.queue=4,unknown_field=7,",
		`JSON {"cpu_utilization":0.3, "mem_utilization":0.2, "application_utilization":0.45, "rps_fractional":120, "eps":0.5, "named_metrics":{"queue":4, "other":1}}`,
		`JSON {"cpuUtilization":0.3, "memUtilization":0.2, "applicationUtilization":0.45, "rpsFractional":120, "eps":0.5, "namedMetrics":{"queue":4}}`,
	} {
		got, err := ParseHeader(v, "queue")
		if err != nil || got != want {
			t.Errorf("ParseHeader(%q) = %+v, %v; want %+v", v, got, err, want)
		}
	}
	got, err := ParseHeader("BIN "+bin, "queue")
	want.Mem = 0 // not in the binary one
	if err != nil || got != want {
		t.Errorf("BIN: %+v, %v; want %+v", got, err, want)
	}
}

func TestParseBinaryReadsGRPCTrailer(t *testing.T) {
	// gRPC writes binary metadata as unpadded base64
	v := binary(t, &v3orcapb.OrcaLoadReport{CpuUtilization: 0.7, Rps: 30}, base64.RawStdEncoding)
	r, err := ParseBinary(v, "")
	if err != nil || r.CPU != 0.7 || r.RPS != 30 || !r.HasRPS || r.Utilization("") != 0.7 {
		t.Fatalf("ParseBinary = %+v, %v", r, err)
	}
}

func TestParseRefusesBadReports(t *testing.T) {
	many := "TEXT " + strings.Repeat("named_metrics.x=1,", MaxFields+1)
	for _, v := range []string{
		"",
		"cpu_utilization=0.3", // no form
		"XML <load/>",
		"TEXT cpu_utilization=abc",
		"TEXT cpu_utilization=NaN",
		"TEXT cpu_utilization=-0.5",
		"TEXT cpu_utilization=+Inf",
		"TEXT cpu_utilization",
		"TEXT " + strings.Repeat("a", MaxValueLen),
		many,
		`JSON {"cpu_utilization":-1}`,
		`JSON {"cpu_utilization":"high"}`,
		`JSON {"cpu_utilization":1e999}`,
		`JSON [1,2]`,
		`JSON {"named_metrics":{"q":-1}}`,
		"BIN !!!not base64",
		"BIN " + base64.StdEncoding.EncodeToString([]byte{0xff, 0xff, 0xff}),
	} {
		if r, err := ParseHeader(v, "q"); err == nil {
			t.Errorf("ParseHeader(%.60q) = %+v, want an error", v, r)
		}
	}
}

func TestUtilizationPicksTheMetric(t *testing.T) {
	r := Report{CPU: 0.5, Mem: 0.2, App: 0.8, Named: 3, HasNamed: true}
	for metric, want := range map[string]float64{
		"": 0.8, ApplicationUtilization: 0.8, CPUUtilization: 0.5, MemUtilization: 0.2, "queue": 3,
	} {
		if got := r.Utilization(metric); got != want {
			t.Errorf("Utilization(%q) = %v, want %v", metric, got, want)
		}
	}
	r.App = 0
	if got := r.Utilization(""); got != 0.5 {
		t.Errorf("without application_utilization: %v, want cpu_utilization 0.5", got)
	}
	if NamedKey("named_metrics.queue") != "queue" || NamedKey("queue") != "queue" || NamedKey(CPUUtilization) != "" {
		t.Error("NamedKey")
	}
}

func TestParseTextDoesNotAllocate(t *testing.T) {
	v := "TEXT cpu_utilization=0.3, application_utilization=0.45, rps_fractional=120, eps=0.5, named_metrics.queue=4"
	if n := testing.AllocsPerRun(100, func() { _, _ = ParseHeader(v, "queue") }); n != 0 {
		t.Errorf("%v allocations per TEXT report, want 0", n)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add("TEXT cpu_utilization=0.3, named_metrics.q=1")
	f.Add(`JSON {"cpu_utilization":0.3}`)
	f.Add("BIN CQAAAAAAAPA/")
	f.Fuzz(func(t *testing.T, v string) {
		r, err := ParseHeader(v, "q")
		if err != nil {
			return
		}
		for _, x := range []float64{r.CPU, r.Mem, r.App, r.RPS, r.EPS, r.Named} {
			if !good(x) {
				t.Fatalf("accepted %v from %q", x, v)
			}
		}
	})
}
