// Package demo_test checks the Docker demo's files without Docker: the
// compose services, the paths they and the Dockerfiles name, and the pinned
// Caddy version. Adapting the Caddyfiles is tested with the Caddyfile tests.
package demo_test

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// root is the repository root, where docker-compose.yml and Dockerfile live;
// go test runs in this package's folder.
const root = ".."

// caddyVersion is the Caddy release the demo images pin.
const caddyVersion = "2.11.9"

// composeFiles are the demo's compose files: three named backends, and one
// app service scaled and found through DNS.
var composeFiles = []string{"docker-compose.yml", "docker-compose.dns.yml"}

// readCompose reads docker-compose.yml; see readComposeFile.
func readCompose(t *testing.T) map[string][]string { return readComposeFile(t, composeFiles[0]) }

// readComposeFile reads the block-style YAML subset the compose files are
// written in ("key: value", "key:", "- item", nested by indentation) into a
// map from dotted path ("services.lb.ports") to its values. A YAML library
// would need a new go.mod requirement; these files need no more than these
// few rules.
func readComposeFile(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()

	type level struct {
		indent int
		key    string
	}
	var stack []level
	values := map[string][]string{}
	path := func() string {
		keys := make([]string, len(stack))
		for i, l := range stack {
			keys[i] = l.key
		}
		return strings.Join(keys, ".")
	}
	scanner := bufio.NewScanner(f)
	for n := 1; scanner.Scan(); n++ {
		line := scanner.Text()
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		text := strings.TrimSpace(line)
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if item, ok := strings.CutPrefix(text, "- "); ok {
			values[path()] = append(values[path()], unquote(item))
			continue
		}
		key, value, ok := strings.Cut(text, ":")
		if !ok {
			t.Fatalf("%s:%d: %q is neither \"key: value\" nor \"- item\"", name, n, text)
		}
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		stack = append(stack, level{indent, key})
		if value = strings.TrimSpace(value); value != "" {
			values[path()] = []string{unquote(value)}
		} else {
			values[path()] = nil // a mapping or a list follows
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return values
}

// unquote drops one pair of surrounding YAML quotes.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// instructions reads a Dockerfile into its instructions, continuation lines
// joined and comments dropped, each split into fields.
func instructions(t *testing.T, name string) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	var out [][]string
	var pending string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending += cont + " "
			continue
		}
		if fields := strings.Fields(pending + line); len(fields) > 0 {
			out = append(out, fields)
		}
		pending = ""
	}
	return out
}

// mustExist fails the test when path, relative to the repository root, is missing.
func mustExist(t *testing.T, path, referrer string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(root, path)); err != nil {
		t.Errorf("%s names %q, which does not exist: %v", referrer, path, err)
	}
}

func TestComposeServices(t *testing.T) {
	compose := readCompose(t)
	if _, ok := compose["version"]; ok {
		t.Errorf("docker-compose.yml has the obsolete top-level version key")
	}
	for _, service := range []string{"lb", "app1", "app2", "app3"} {
		prefix := "services." + service
		if _, ok := compose[prefix]; !ok {
			t.Errorf("docker-compose.yml has no service %q", service)
			continue
		}
		if got := compose[prefix+".container_name"]; !slices.Equal(got, []string{service}) {
			t.Errorf("service %s: container_name %q, want %q", service, got, service)
		}
		if service != "lb" {
			if env := compose[prefix+".environment"]; !slices.Contains(env, "APP_NAME="+service) {
				t.Errorf("service %s: environment %q lacks APP_NAME=%s", service, env, service)
			}
		}
	}
	ports := compose["services.lb.ports"]
	for _, want := range []string{"3030:3030", "127.0.0.1:2019:2019"} {
		if !slices.Contains(ports, want) {
			t.Errorf("service lb: ports %q do not publish %q", ports, want)
		}
	}
	if got := compose["services.lb.build.context"]; !slices.Equal(got, []string{"."}) {
		t.Errorf("service lb: build context %q, want \".\"", got)
	}
}

// TestReferencedFilesExist follows every build each compose file names to its
// Dockerfile, and every COPY in that Dockerfile to its sources.
func TestReferencedFilesExist(t *testing.T) {
	for _, file := range composeFiles {
		t.Run(file, func(t *testing.T) { testReferencedFilesExist(t, file) })
	}
}

func testReferencedFilesExist(t *testing.T, file string) {
	compose := readComposeFile(t, file)
	dockerfiles := map[string]bool{}
	for key, context := range compose {
		service, ok := strings.CutSuffix(key, ".build.context")
		if !ok || len(context) != 1 {
			continue
		}
		if context[0] != "." {
			t.Errorf("%s: build context %q; this test only follows the repository root", service, context[0])
			continue
		}
		dockerfile := "Dockerfile"
		if d := compose[service+".build.dockerfile"]; len(d) == 1 {
			dockerfile = d[0]
		}
		mustExist(t, dockerfile, service+" in "+file)
		dockerfiles[dockerfile] = true
	}
	if len(dockerfiles) == 0 {
		t.Fatalf("%s builds nothing", file)
	}
	for dockerfile := range dockerfiles {
		for _, fields := range instructions(t, dockerfile) {
			if !strings.EqualFold(fields[0], "COPY") && !strings.EqualFold(fields[0], "ADD") {
				continue
			}
			args := fields[1:]
			if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--from=") }) {
				continue // copies from another stage, not from the context
			}
			args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return strings.HasPrefix(a, "--") })
			if len(args) < 2 {
				t.Errorf("%s: %q has no source or no destination", dockerfile, strings.Join(fields, " "))
				continue
			}
			for _, src := range args[:len(args)-1] {
				mustExist(t, src, dockerfile)
			}
		}
	}
}

// TestComposeDNSScalesOneServiceFoundThroughDockerDNS checks the discovery
// demo: one app service without a fixed container name (so it can be
// scaled), and the lb service running demo/Caddyfile.dns, whose pool finds
// the replicas through Docker's embedded DNS server.
func TestComposeDNSScalesOneServiceFoundThroughDockerDNS(t *testing.T) {
	compose := readComposeFile(t, "docker-compose.dns.yml")
	for _, service := range []string{"lb", "app"} {
		if _, ok := compose["services."+service]; !ok {
			t.Errorf("docker-compose.dns.yml has no service %q", service)
		}
	}
	if _, ok := compose["services.app.container_name"]; ok {
		t.Error("service app has a container_name: it could not be scaled")
	}
	if got := compose["services.app.command"]; !slices.Equal(got, []string{`["-listen", ":80"]`}) {
		t.Errorf("service app: command %q, want it on port 80, the port of the dynamic source", got)
	}
	volumes := compose["services.lb.volumes"]
	if !slices.Contains(volumes, "./demo/Caddyfile.dns:/etc/caddy/Caddyfile:ro") {
		t.Errorf("service lb: volumes %q do not mount demo/Caddyfile.dns as its Caddyfile", volumes)
	}
	ports := compose["services.lb.ports"]
	for _, want := range []string{"3030:3030", "127.0.0.1:2019:2019"} {
		if !slices.Contains(ports, want) {
			t.Errorf("service lb: ports %q do not publish %q", ports, want)
		}
	}
	caddyfile, err := os.ReadFile(filepath.Join(root, "demo", "Caddyfile.dns"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dynamic a app 80 {", "resolvers 127.0.0.11"} {
		if !strings.Contains(string(caddyfile), want) {
			t.Errorf("demo/Caddyfile.dns lacks %q", want)
		}
	}
}
