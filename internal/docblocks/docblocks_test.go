package docblocks

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const page = "# A page\n\n```caddyfile partial\nlbpool a:80\n```\n\n1. Drain it:\n\n   ```console\n   $ curl -s localhost:2019/lbpool/stats | jq '.[1]'\n   {}\n   ```\n"

func TestReadFindsBlocksAndRewriteKeepsTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "page.md")
	if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	blocks, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].Lang != "caddyfile" || blocks[0].Role != "partial" || blocks[0].Text != "lbpool a:80\n" {
		t.Fatalf("blocks: %+v", blocks)
	}
	cmds := blocks[1].Commands()
	if blocks[1].Line != 9 || len(cmds) != 1 || !slices.Equal(cmds[0].Output, []string{"{}"}) {
		t.Fatalf("console block: %+v, commands %+v", blocks[1], cmds)
	}
	cmds[0].Output = []string{"{", `  "a": 1`, "}"}
	if err := Rewrite(path, blocks, map[int]string{blocks[1].Line: Render(cmds)}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := strings.Replace(page, "   {}\n", "   {\n     \"a\": 1\n   }\n", 1)
	if string(data) != want {
		t.Fatalf("rewritten:\n%s\nwant:\n%s", data, want)
	}
}

func TestCurlsReadsWhatThePagesWrite(t *testing.T) {
	for _, tc := range []struct {
		cmd    string
		method string
		url    string
		body   string
		pipe   [][]string
		repeat int
	}{
		{`curl -s localhost:2019/lbpool/stats | jq '.[] | {url, alive}'  # a comment`, "GET", "http://localhost:2019/lbpool/stats", "",
			[][]string{{"jq", ".[] | {url, alive}"}}, 1},
		{`curl -s -X POST localhost:2019/lbpool/state -d '{"pool":"web","state":"drain"}'`, "POST", "http://localhost:2019/lbpool/state",
			`{"pool":"web","state":"drain"}`, nil, 1},
		{`for i in 1 2 3; do curl -s localhost:3030 | head -1; done`, "GET", "http://localhost:3030", "", [][]string{{"head", "-1"}}, 3},
		{`for c in $(seq 8); do (end=$((SECONDS+4)); while [ $SECONDS -lt $end ]; do curl -s localhost:3030 | head -1; done) & done; wait`,
			"GET", "http://localhost:3030", "", [][]string{{"head", "-1"}}, 1},
		{`curl -si 'localhost:8080/?a=1'`, "GET", "http://localhost:8080/?a=1", "", nil, 1},
	} {
		curls, err := Curls(tc.cmd)
		if err != nil || len(curls) != 1 {
			t.Fatalf("%s: %v %+v", tc.cmd, err, curls)
		}
		c := curls[0]
		if c.Method != tc.method || c.URL.String() != tc.url || c.Body != tc.body || !slices.EqualFunc(c.Pipe, tc.pipe, slices.Equal) || c.Repeat != tc.repeat {
			t.Errorf("%s: read as %+v", tc.cmd, c)
		}
	}
	if _, err := Curls("curl -H 'X: y' localhost:2019/"); err == nil {
		t.Error("a flag the tests do not replay was accepted")
	}
}

func TestJQ(t *testing.T) {
	doc := []byte(`[{"a": 1, "b": {"c": true}}, {"a": 2, "b": null}]`)
	for filter, want := range map[string]string{
		".[1]":            "{\n  \"a\": 2,\n  \"b\": null\n}",
		".[] | {b, a, z}": "{\n  \"b\": {\n    \"c\": true\n  },\n  \"a\": 1,\n  \"z\": null\n}\n{\n  \"b\": null,\n  \"a\": 2,\n  \"z\": null\n}",
	} {
		got, err := JQ(doc, filter)
		if err != nil || strings.Join(got, "\n") != want {
			t.Errorf("jq %q: %v\n%s", filter, err, strings.Join(got, "\n"))
		}
	}
}
