package demo_test

// The images are built where no test can run Docker, so their build steps are
// checked here against what they build from: the lb image runs the command
// CI runs, and the backend image copies everything its package needs.

import (
	"bufio"
	"context"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// stage is one FROM of a Dockerfile and the instructions under it.
type stage struct {
	image, name  string
	instructions [][]string
}

// stages splits a Dockerfile's instructions at each FROM.
func stages(t *testing.T, dockerfile string) []stage {
	t.Helper()
	var out []stage
	for _, fields := range instructions(t, dockerfile) {
		if strings.EqualFold(fields[0], "FROM") {
			s := stage{image: fields[1]}
			if len(fields) == 4 && strings.EqualFold(fields[2], "AS") {
				s.name = fields[3]
			}
			out = append(out, s)
			continue
		}
		if len(out) == 0 {
			t.Fatalf("%s: %q before the first FROM", dockerfile, strings.Join(fields, " "))
		}
		out[len(out)-1].instructions = append(out[len(out)-1].instructions, fields)
	}
	return out
}

// builtFiles is what a stage's WORKDIR, COPY and RUN instructions did: the
// files it copied from the build context (by their path in the context,
// "." for the whole context) and what its RUN lines wrote (by their path in
// the image: a -o or --output argument, or ./caddy for ./xcaddy.sh build).
type builtFiles struct {
	workdir string
	copied  map[string]string // context path → path in the image
	outputs map[string]string // path in the image → the RUN command that writes it
	runs    []string          // every RUN command, in order
}

func follow(s stage) builtFiles {
	b := builtFiles{workdir: "/", copied: map[string]string{}, outputs: map[string]string{}}
	inImage := func(p string) string {
		if path.IsAbs(p) {
			return path.Clean(p)
		}
		return path.Join(b.workdir, p)
	}
	for _, fields := range s.instructions {
		switch strings.ToUpper(fields[0]) {
		case "WORKDIR":
			b.workdir = inImage(fields[1])
		case "COPY":
			if strings.HasPrefix(fields[1], "--from=") || len(fields) < 3 {
				continue
			}
			dst := inImage(fields[len(fields)-1])
			for _, src := range fields[1 : len(fields)-1] {
				b.copied[path.Clean(src)] = dst
			}
		case "RUN":
			cmd := strings.Join(fields[1:], " ")
			b.runs = append(b.runs, cmd)
			for i, f := range fields[:len(fields)-1] {
				if f == "-o" || f == "--output" {
					b.outputs[inImage(fields[i+1])] = cmd
				}
			}
			if strings.HasPrefix(cmd, "./xcaddy.sh build") {
				b.outputs[inImage("caddy")] = cmd
			}
		}
	}
	return b
}

// ciCommands is every command line of .ci/run, trimmed.
func ciCommands(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	for scanner := bufio.NewScanner(f); scanner.Scan(); {
		if line := strings.TrimSpace(scanner.Text()); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

// TestDockerfileBuildsAsCIDoes: the lb image's builder stage runs the build
// command CI runs (so a build that breaks fails CI, not `docker compose up`),
// with the shell the script needs and the whole tree copied first; the
// image pins the Caddy version the script builds; the final stage copies
// the binary from where the script writes it.
func TestDockerfileBuildsAsCIDoes(t *testing.T) {
	st := stages(t, "Dockerfile")
	if len(st) != 2 || st[0].image != "caddy:"+caddyVersion+"-builder" || st[0].name == "" ||
		st[1].image != "caddy:"+caddyVersion+"-alpine" {
		t.Fatalf("Dockerfile stages %+v, want caddy:%s-builder AS <name>, then caddy:%s-alpine", st, caddyVersion, caddyVersion)
	}
	builder := follow(st[0])
	var build string
	var before []string
	for i, cmd := range builder.runs {
		if strings.Contains(cmd, "xcaddy") {
			if build != "" {
				t.Errorf("two RUN lines build: %q and %q", build, cmd)
			}
			build, before = cmd, builder.runs[:i]
		}
	}
	if !strings.HasPrefix(build, "./xcaddy.sh build") {
		t.Fatalf("the builder stage runs %q, want ./xcaddy.sh build: plain xcaddy asks the module proxy for this unpublished module", build)
	}
	if builder.copied["."] != builder.workdir {
		t.Errorf("the builder copies %v with WORKDIR %s, want the whole context (COPY . %s) for the script", builder.copied, builder.workdir, builder.workdir)
	}
	ci := ciCommands(t)
	if !slices.Contains(ci, build) {
		t.Errorf(".ci/run does not run the Dockerfile's build command %q; it runs:\n%s", build, strings.Join(ci, "\n"))
	}

	script, err := os.ReadFile(filepath.Join(root, "xcaddy.sh"))
	if err != nil {
		t.Fatal(err)
	}
	shebang, _, _ := strings.Cut(string(script), "\n")
	if strings.Contains(shebang, "bash") && !slices.ContainsFunc(before, func(cmd string) bool {
		return strings.HasPrefix(cmd, "apk add") && slices.Contains(strings.Fields(cmd), "bash")
	}) {
		t.Errorf("xcaddy.sh runs under %q, but the builder stage (Alpine, sh only) installs no bash before %q", shebang, build)
	}
	if fi, err := os.Stat(filepath.Join(root, "xcaddy.sh")); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("xcaddy.sh is not executable (%v): the builder runs it as ./xcaddy.sh", err)
	}
	for _, want := range []string{"CADDY_VERSION=v" + caddyVersion + "\n", "--output ./caddy"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("xcaddy.sh lacks %q: the image would not hold the Caddy it is tagged with", strings.TrimSpace(want))
		}
	}

	final := st[1]
	copiedBinary := false
	for _, fields := range final.instructions {
		if strings.EqualFold(fields[0], "COPY") && fields[1] == "--from="+st[0].name && len(fields) == 4 {
			if _, ok := builder.outputs[fields[2]]; !ok {
				t.Errorf("the final stage copies %s from %s, which builds only %v", fields[2], st[0].name, builder.outputs)
			}
			copiedBinary = copiedBinary || fields[3] == "/usr/bin/caddy"
		}
	}
	if !copiedBinary {
		t.Error("the final stage does not put the built Caddy at /usr/bin/caddy")
	}
}

// TestDockerignoreKeepsWhatTheBuildReads: the lb image builds from the whole
// context, so no .dockerignore pattern may leave out a Go file, go.mod,
// go.sum or the script.
func TestDockerignoreKeepsWhatTheBuildReads(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: %q: this test does not read exceptions", line)
		}
		patterns = append(patterns, strings.Trim(line, "/"))
	}
	ignored := func(rel string) string {
		for p := rel; p != "."; p = path.Dir(p) {
			for _, pattern := range patterns {
				if ok, _ := path.Match(pattern, p); ok {
					return pattern
				}
			}
		}
		return ""
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".go") || slices.Contains([]string{"go.mod", "go.sum", "xcaddy.sh"}, rel) {
			if pattern := ignored(rel); pattern != "" {
				t.Errorf(".dockerignore pattern %q leaves %s out of the build", pattern, rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBackendImageBuildsFromWhatItCopies: demo/Dockerfile.backend copies
// Go files and builds them in a fresh module (go mod init), so it must copy
// every non-test file of demo/backend, and those may import the standard
// library only; the final stage copies what the builder wrote.
func TestBackendImageBuildsFromWhatItCopies(t *testing.T) {
	const dockerfile = "demo/Dockerfile.backend"
	st := stages(t, dockerfile)
	if len(st) != 2 {
		t.Fatalf("%s has %d stages, want a builder and the image", dockerfile, len(st))
	}
	builder := follow(st[0])
	if !slices.ContainsFunc(builder.runs, func(cmd string) bool { return strings.Contains(cmd, "go mod init") }) {
		t.Fatalf("%s no longer builds in a fresh module; update this test", dockerfile)
	}
	files, err := filepath.Glob(filepath.Join(root, "demo", "backend", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		rel := filepath.ToSlash(strings.TrimPrefix(file, root+string(filepath.Separator)))
		if strings.HasSuffix(rel, "_test.go") {
			continue
		}
		if _, ok := builder.copied[rel]; !ok {
			t.Errorf("%s does not copy %s, which the backend needs", dockerfile, rel)
		}
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			first, _, _ := strings.Cut(strings.Trim(imp.Path.Value, `"`), "/")
			if strings.Contains(first, ".") {
				t.Errorf("%s imports %s, which a fresh module without go.sum cannot build", rel, imp.Path.Value)
			}
		}
	}
	for _, fields := range st[1].instructions {
		if strings.EqualFold(fields[0], "COPY") && strings.HasPrefix(fields[1], "--from=") {
			if _, ok := builder.outputs[fields[2]]; !ok {
				t.Errorf("%s: the image copies %s, which the builder does not write (it writes %v)", dockerfile, fields[2], builder.outputs)
			}
		}
	}
}

// TestXcaddyShBuildFailsWhenXcaddyFails: the build the Dockerfile and CI
// run stops with an error when xcaddy fails, rather than falling back to
// another build that would hide the breakage. A stand-in go on PATH fails
// `go run` (xcaddy) and makes a Caddy with the lbpool modules on `go build`,
// so a fallback would succeed; LBPOOL_BUILD_OFFLINE=1 asks for that build.
func TestXcaddyShBuildFailsWhenXcaddyFails(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(root, "xcaddy.sh"))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	fakeGo := `#!/bin/sh
case "$1 $2" in
"env GOVERSION") echo go1.26.0 ;;
"env GOPROXY") echo https://proxy.invalid,direct ;;
run*) echo "xcaddy: no such module" >&2; exit 1 ;;
"build -o") printf '#!/bin/sh\necho http.handlers.lbpool\n' >"$3" && chmod +x "$3" ;;
*) echo "unexpected: go $*" >&2; exit 2 ;;
esac
`
	if err := os.WriteFile(filepath.Join(bin, "go"), []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "LBPOOL_BUILD_OFFLINE=")
	})
	env = append(env, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	build := func(extraEnv ...string) (string, bool, error) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "xcaddy.sh"), script, 0o755); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(dir, "xcaddy.sh"), "build")
		cmd.Env = append(slices.Clone(env), extraEnv...)
		out, err := cmd.CombinedOutput()
		_, statErr := os.Stat(filepath.Join(dir, "caddy"))
		return string(out), statErr == nil, err
	}

	out, built, err := build()
	if err == nil || built {
		t.Fatalf("xcaddy failed, yet ./xcaddy.sh build succeeded (%v) or left a ./caddy (%v):\n%s", err, built, out)
	}
	if !strings.Contains(out, "the xcaddy build failed") || !strings.Contains(out, "LBPOOL_BUILD_OFFLINE=1") {
		t.Errorf("the failure does not say what failed and what to do instead:\n%s", out)
	}
	if out, built, err := build("LBPOOL_BUILD_OFFLINE=1"); err != nil || !built {
		t.Errorf("LBPOOL_BUILD_OFFLINE=1 ./xcaddy.sh build: %v, built %v:\n%s", err, built, out)
	}
}
