// Package docblocks reads the fenced code blocks of lbpool's Markdown pages
// (README.md and docs/*.md) and the commands in them, so that tests can
// check every example against a real Caddy; with -update they write the
// answers back.
//
// A block's info string is its language and its role, both checked by the
// doc tests (docs/tests.md lists them): ```caddyfile, ```caddyfile partial,
// ```caddyfile error, ```json handler, ```json log, ```console, ```sh,
// ```text metrics, ```promql, ```text.
package docblocks

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Block is one fenced code block.
type Block struct {
	File string // the page, as given to Read
	Line int    // the line of the opening fence, from 1
	Lang string // the info string's first word
	Role string // the rest of the info string
	Text string // the content without the fence's indentation; each line ends in "\n"

	first, last int    // the content's line indexes in the file (last exclusive)
	indent      string // the fence's indentation
}

// Pages returns README.md, every docs/*.md page and every docs/*/README.md
// under the repository root, README.md first.
func Pages(root string) ([]string, error) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	// a concern with files of its own beside its page (docs/monitoring/)
	folders, err := filepath.Glob(filepath.Join(root, "docs", "*", "README.md"))
	if err != nil {
		return nil, err
	}
	docs = append(docs, folders...)
	sort.Strings(docs)
	return append([]string{filepath.Join(root, "README.md")}, docs...), nil
}

// Read returns the fenced code blocks of a Markdown file, in order. An
// unclosed fence is an error.
func Read(path string) ([]Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(data), "\n")
	var out []Block
	for i := 0; i < len(lines); i++ {
		indent, info, ok := fence(lines[i])
		if !ok {
			continue
		}
		b := Block{File: path, Line: i + 1, indent: indent, first: i + 1}
		b.Lang, b.Role, _ = strings.Cut(strings.TrimSpace(info), " ")
		b.Role = strings.TrimSpace(b.Role)
		j := i + 1
		for ; j < len(lines); j++ {
			if in, rest, ok := fence(lines[j]); ok && in == indent && rest == "" {
				break
			}
			b.Text += strings.TrimPrefix(lines[j], indent) + "\n"
		}
		if j == len(lines) {
			return nil, fmt.Errorf("%s:%d: the fence is never closed", path, i+1)
		}
		b.last = j
		out = append(out, b)
		i = j
	}
	return out, nil
}

// fence reports whether line opens or closes a fenced block: up to three
// spaces of indentation (more inside a list item), then ```.
func fence(line string) (indent, info string, ok bool) {
	trimmed := strings.TrimLeft(line, " ")
	rest, found := strings.CutPrefix(trimmed, "```")
	if !found || len(line)-len(trimmed) > 6 {
		return "", "", false
	}
	return line[:len(line)-len(trimmed)], rest, true
}

// Where names a block, or a line in it, for test messages: file:line.
func (b Block) Where(offset int) string {
	return fmt.Sprintf("%s:%d", b.File, b.Line+offset)
}

// Rewrite replaces the content of blocks of one file: texts maps a block's
// Line to its new content (each line ending in "\n").
func Rewrite(path string, blocks []Block, texts map[int]string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	// from the last block up, so the earlier indexes stay right
	sorted := append([]Block(nil), blocks...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Line > sorted[j].Line })
	for _, b := range sorted {
		text, ok := texts[b.Line]
		if !ok {
			continue
		}
		var repl []string
		for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
			if l != "" {
				l = b.indent + l
			}
			repl = append(repl, l)
		}
		lines = append(lines[:b.first], append(repl, lines[b.last:]...)...)
	}
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644)
}
