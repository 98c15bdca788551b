package caddyfile_test

// The pages (README.md and docs/*.md) show Caddyfiles, JSON, commands and
// their answers; these tests hold each example to what lbpool does, so a
// page cannot go stale without a test failing. docs/tests.md lists the
// kinds of blocks and how each is checked. With -update, the answers shown
// are written back from what Caddy answers.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/lbpool/lbpool/internal/docblocks"
	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
	"github.com/lbpool/lbpool/statsapi"
)

var update = flag.Bool("update", false, "rewrite the answers shown in README.md and docs/ from what Caddy answers")

// repoRoot is where README.md and docs/ are; go test runs in this package's folder.
const repoRoot = ".."

// readmeLines bounds README.md: the front door, with the details on the docs pages.
const readmeLines = 250

// docBlock is a block of a page.
type docBlock = docblocks.Block

// docPage is a page and its blocks.
type docPage struct {
	path   string
	blocks []docBlock
}

// pageBlocks returns the blocks of every page, README.md first.
func pageBlocks(t *testing.T) []docPage {
	t.Helper()
	pages, err := docblocks.Pages(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var out []docPage
	for _, p := range pages {
		blocks, err := docblocks.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, docPage{p, blocks})
	}
	return out
}

// blocksOf returns every block of the pages with this language and role.
func blocksOf(t *testing.T, lang, role string) []docBlock {
	t.Helper()
	var out []docBlock
	for _, p := range pageBlocks(t) {
		for _, b := range p.blocks {
			if b.Lang == lang && b.Role == role {
				out = append(out, b)
			}
		}
	}
	return out
}

// knownBlocks are the languages and roles a block may have; docs/tests.md
// says how each is checked.
var knownBlocks = map[string][]string{
	"caddyfile": {"", "partial", "error"},
	"json":      {"handler", "log"},
	"console":   {""},
	"sh":        {""},
	"text":      {"", "metrics"},
	"promql":    {""},
	// backend code that emits a load report (docs/load-reports.md)
	"go":         {""},
	"python":     {""},
	"javascript": {""},
}

func TestDocREADMEStaysShort(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n > readmeLines {
		t.Errorf("README.md has %d lines, more than %d: move details to a page in docs/", n, readmeLines)
	}
}

func TestDocBlocksAreOfAKnownKind(t *testing.T) {
	for _, p := range pageBlocks(t) {
		blocks := p.blocks
		for i, b := range blocks {
			roles, ok := knownBlocks[b.Lang]
			if !ok || !slices.Contains(roles, b.Role) {
				t.Errorf("%s: block ```%s %s is of no kind the doc tests check (docs/tests.md lists them)", b.Where(0), b.Lang, b.Role)
			}
			if b.Lang == "caddyfile" && b.Role == "error" {
				if i+1 == len(blocks) || !isAdaptCommand(blocks[i+1]) {
					t.Errorf("%s: a ```caddyfile error block must be followed by a console block with `$ caddy adapt --config Caddyfile`", b.Where(0))
				}
			}
			if b.Lang != "console" && b.Lang != "sh" {
				continue
			}
			for _, cmd := range b.Commands() {
				curls, err := docblocks.Curls(cmd.Text)
				if err != nil {
					t.Errorf("%s: %v", b.Where(cmd.Line+1), err)
				}
				for _, c := range curls {
					if c.Target() == "" {
						t.Errorf("%s: curl to %s, which no doc test answers (admin localhost:2019, site localhost:8080, demo localhost:3030)", b.Where(cmd.Line+1), c.URL.Host)
					}
				}
			}
		}
	}
}

func isAdaptCommand(b docBlock) bool {
	cmds := b.Commands()
	return b.Lang == "console" && len(cmds) == 1 && cmds[0].Text == "caddy adapt --config Caddyfile"
}

// wrapPartial makes a partial Caddyfile whole: its lines become a site's.
func wrapPartial(text string) string {
	return ":8080 {\n\t" + strings.ReplaceAll(strings.TrimSuffix(text, "\n"), "\n", "\n\t") + "\n}\n"
}

func TestDocCaddyfilesAdapt(t *testing.T) {
	n := 0
	for _, role := range []string{"", "partial"} {
		for _, b := range blocksOf(t, "caddyfile", role) {
			text := b.Text
			if role == "partial" {
				text = wrapPartial(text)
			}
			n++
			_, warnings, err := adaptCaddyfile([]byte(text))
			if err != nil {
				t.Errorf("%s: the Caddyfile does not adapt: %v", b.Where(0), err)
			}
			for _, w := range warnings {
				// the pages align comments, which caddy fmt would not
				if !strings.Contains(w.Message, "not formatted") {
					t.Errorf("%s: adapting warns: %v", b.Where(0), w)
				}
			}
		}
	}
	t.Logf("%d Caddyfiles adapted", n)
}

// adaptErrorTime stands for the time in the log line Caddy prints an
// adapt error as, on a terminal.
const adaptErrorTime = "2026/12/03 10:31:30.079"

var adaptErrorLine = regexp.MustCompile(`^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}\tERROR\t(.*)$`)

func TestDocAdaptErrorIsWhatCaddyPrints(t *testing.T) {
	for _, p := range pageBlocks(t) {
		blocks := p.blocks
		texts := map[int]string{}
		for i, b := range blocks {
			if b.Lang != "caddyfile" || b.Role != "error" || i+1 == len(blocks) || !isAdaptCommand(blocks[i+1]) {
				continue
			}
			_, _, err := adaptCaddyfile([]byte(b.Text))
			if err == nil {
				t.Errorf("%s: the Caddyfile shown to fail adapts", b.Where(0))
				continue
			}
			out := blocks[i+1]
			cmds := out.Commands()
			want := adaptErrorTime + "\t" + "ERROR" + "\t" + err.Error()
			shown := strings.Join(cmds[0].Output, "\n")
			if m := adaptErrorLine.FindStringSubmatch(shown); m == nil || m[1] != err.Error() {
				if *update {
					cmds[0].Output = []string{want}
					texts[out.Line] = docblocks.Render(cmds)
					continue
				}
				t.Errorf("%s: caddy adapt prints\n%s\nthe page shows\n%s", out.Where(0), want, shown)
			}
		}
		rewrite(t, p.path, blocks, texts)
	}
}

// rewrite writes the new texts of a page's blocks (only under -update).
func rewrite(t *testing.T, page string, blocks []docBlock, texts map[int]string) {
	t.Helper()
	if len(texts) == 0 {
		return
	}
	if err := docblocks.Rewrite(page, blocks, texts); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d examples rewritten", page, len(texts))
}

func TestDocJSONHandlersLoad(t *testing.T) {
	c := lbtest.Start(t)
	blocks := blocksOf(t, "json", "handler")
	for _, b := range blocks {
		var h map[string]json.RawMessage
		if err := json.Unmarshal([]byte(b.Text), &h); err != nil {
			t.Errorf("%s: not a JSON object: %v", b.Where(0), err)
			continue
		}
		if name, ok := h["handler"]; ok && string(name) != `"lbpool"` {
			t.Errorf("%s: handler %s, not lbpool", b.Where(0), name)
			continue
		}
		// a part of a handler: the handler name, and a backend if it has none
		h["handler"] = json.RawMessage(`"lbpool"`)
		if h["backends"] == nil && h["dynamic"] == nil {
			h["backends"] = json.RawMessage(`[{"url": "127.0.0.1:9001"}]`)
		}
		handler, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.LoadHandler(handler); err != nil {
			t.Errorf("%s: the handler does not load: %v", b.Where(0), err)
		}
	}
	c.Load(t, "")
	t.Logf("%d JSON handlers loaded", len(blocks))
}

// configReference is one row of the tables of docs/configuration.md: the
// Caddyfile option and the JSON fields it names.
type configReference struct {
	line   int
	option string   // the Caddyfile option: the first word of the first cell's code
	json   []string // the JSON fields of the second cell
}

var (
	codeSpan      = regexp.MustCompile("`([^`]+)`")
	parenthesized = regexp.MustCompile(`\([^)]*\)`)
)

func configurationTables(t *testing.T) []configReference {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out []configReference
	for i, line := range strings.Split(string(data), "\n") {
		cells := strings.Split(strings.ReplaceAll(line, `\|`, "¦"), "|")
		if len(cells) < 4 || !strings.HasPrefix(line, "| `") {
			continue
		}
		r := configReference{line: i + 1}
		if m := codeSpan.FindStringSubmatch(cells[1]); m != nil {
			r.option = strings.Fields(m[1])[0]
		}
		// code in parentheses is a value, not a field: `dynamic[].kind` (`a`)
		for _, m := range codeSpan.FindAllStringSubmatch(parenthesized.ReplaceAllString(cells[2], ""), -1) {
			r.json = append(r.json, m[1])
		}
		out = append(out, r)
	}
	return out
}

// jsonFields lists the JSON fields of a config type as the reference names
// them: "health_uri", "backends[].url", "sticky.secret". Caddy's own types
// (tls, headers) are listed one level down and need not all be named.
func jsonFields(typ reflect.Type, prefix string, out map[string]bool) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		path := prefix + name
		out[path] = true
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			jsonFields(ft.Elem(), path+"[].", out)
		case ft.Kind() == reflect.Struct && ft.PkgPath() == reflect.TypeOf(leastconn.Handler{}).PkgPath():
			jsonFields(ft, path+".", out)
		}
	}
}

func TestDocConfigurationNamesEveryOption(t *testing.T) {
	rows := configurationTables(t)
	if len(rows) < 40 {
		t.Fatalf("only %d option rows in docs/configuration.md's tables", len(rows))
	}
	own := map[string]bool{}
	jsonFields(reflect.TypeOf(leastconn.Handler{}), "", own)
	// the dashboard handler's fields, named as its directive's
	jsonFields(reflect.TypeOf(statsapi.Dashboard{}), "lbpool_dashboard.", own)
	caddys := map[string]bool{}
	jsonFields(reflect.TypeOf(reverseproxy.TLSConfig{}), "tls.", caddys)
	jsonFields(reflect.TypeOf(headers.Handler{}), "headers.", caddys)

	named := map[string]bool{}
	for _, r := range rows {
		for _, f := range r.json {
			f, _, _ = strings.Cut(f, " ")
			named[f] = true
			if !own[f] && !caddys[f] {
				t.Errorf("docs/configuration.md:%d: %q is no JSON field of the handler", r.line, f)
			}
		}
		if msg := optionRecognized(r); msg != "" {
			t.Errorf("docs/configuration.md:%d: %s", r.line, msg)
		}
	}
	for f := range own {
		if !named[f] && !namesAField(named, f+".") && !namesAField(named, f+"[].") {
			t.Errorf("docs/configuration.md names no option with the JSON field %q", f)
		}
	}
}

// namesAField reports whether a field under prefix is named.
func namesAField(named map[string]bool, prefix string) bool {
	for f := range named {
		if strings.HasPrefix(f, prefix) {
			return true
		}
	}
	return false
}

// optionRecognized adapts a Caddyfile with the row's option (without its
// arguments) where it belongs: a wrong count of arguments is fine, an
// option the parser does not know is not.
func optionRecognized(r configReference) string {
	if r.option == "" || r.option == "lbpool" {
		return ""
	}
	block := "lbpool 127.0.0.1:9001 {\n" + r.option + "\n}\n"
	for _, f := range r.json {
		switch {
		case strings.HasPrefix(f, "lbpool_dashboard."):
			block = "lbpool_dashboard " + strings.TrimPrefix(f, "lbpool_dashboard.") + "\n"
		case strings.HasPrefix(f, "dynamic[].") && !strings.HasPrefix(r.option, "dynamic"):
			block = "lbpool {\ndynamic a app.internal 80 {\n" + r.option + "\n}\n}\n"
		case strings.HasPrefix(f, "sticky.") && r.option != "sticky":
			block = "lbpool 127.0.0.1:9001 {\nsticky cookie {\n" + r.option + "\n}\n}\n"
		case strings.HasPrefix(f, "load_reports.") && !strings.HasPrefix(r.option, "load_reports"):
			block = "lbpool 127.0.0.1:9001 {\nload_reports {\n" + r.option + "\n}\n}\n"
		}
	}
	_, _, err := adaptCaddyfile([]byte(wrapPartial(block)))
	if err != nil && strings.Contains(err.Error(), "unrecognized") {
		return fmt.Sprintf("%s: %v", r.option, err)
	}
	return ""
}

// markdownLink finds the target of a link to a page: [text](target).
var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func TestDocLinksReachTheirPageAndHeading(t *testing.T) {
	pages, err := docblocks.Pages(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]map[string]bool{}
	for _, p := range pages {
		anchors[filepath.Clean(p)] = headingAnchors(t, p)
	}
	for _, p := range pages {
		data, _ := os.ReadFile(p)
		for _, m := range markdownLink.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := filepath.Clean(p)
			if file != "" {
				path = filepath.Join(filepath.Dir(p), file)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s: link %s: no such file", p, target)
				continue
			}
			if anchor != "" && anchors[path] != nil && !anchors[path][anchor] {
				t.Errorf("%s: link %s: no such heading in %s", p, target, path)
			}
		}
	}
}

// headingAnchors returns the anchors GitHub gives a page's headings.
func headingAnchors(t *testing.T, page string) map[string]bool {
	t.Helper()
	blocks, err := docblocks.Read(page)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(page)
	lines := strings.Split(string(data), "\n")
	inBlock := map[int]bool{}
	for _, b := range blocks {
		for i := b.Line; i < b.Line+strings.Count(b.Text, "\n")+1; i++ {
			inBlock[i] = true
		}
	}
	out := map[string]bool{}
	for i, line := range lines {
		heading, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !strings.HasPrefix(line, "#") || !ok || inBlock[i+1] {
			continue
		}
		var slug strings.Builder
		for _, r := range strings.ToLower(heading) {
			switch {
			case r == ' ':
				slug.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				slug.WriteRune(r)
			}
		}
		out[slug.String()] = true
	}
	return out
}
