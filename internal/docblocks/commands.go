package docblocks

import (
	"fmt"
	"net/url"
	"strings"
)

// Command is one shell command of a ```console or ```sh block, with the
// output a ```console block shows after it.
type Command struct {
	Line   int      // the command's first line in the block, from 0
	Text   string   // the command, continuation lines joined
	Source []string // the command's lines as written (without "$ ")
	Output []string // the lines shown after it (console blocks only); comments left out
}

// Commands returns the commands of a console block (lines starting with
// "$ ", followed by their output; lines starting with "# " are comments)
// or of an sh block (every line a command; "#" starts a comment).
func (b Block) Commands() []Command {
	lines := strings.Split(strings.TrimSuffix(b.Text, "\n"), "\n")
	console := b.Lang == "console"
	var out []Command
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if console {
			cmd, ok := strings.CutPrefix(line, "$ ")
			if !ok {
				if len(out) > 0 && !strings.HasPrefix(line, "# ") {
					out[len(out)-1].Output = append(out[len(out)-1].Output, line)
				}
				continue
			}
			line = cmd
		} else if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		c := Command{Line: i, Source: []string{line}}
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			c.Text += strings.TrimSuffix(line, "\\") + " "
			line = lines[i]
			c.Source = append(c.Source, line)
		}
		c.Text = strings.TrimSpace(c.Text + line)
		out = append(out, c)
	}
	return out
}

// Render writes commands back as a console block's content, each with its
// output.
func Render(cmds []Command) string {
	var b strings.Builder
	for _, c := range cmds {
		for i, l := range c.Source {
			if i == 0 {
				b.WriteString("$ ")
			}
			b.WriteString(l + "\n")
		}
		for _, l := range c.Output {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Curl is one curl invocation in a command, and what the command does
// with its answer.
type Curl struct {
	Method  string
	URL     *url.URL
	Body    string
	Include bool       // -i: the status line and headers before the body
	Pipe    [][]string // the commands its output is piped through: {"jq", ".[1]"}, {"head", "-1"}
	Repeat  int        // a for loop over plain words runs it once a word
}

// Curls returns the curl invocations of a shell command. Only the flags
// the pages use are understood (-s, -i, -X, -d); any other is an error, so
// a page cannot show a command its test does not replay.
func Curls(cmd string) ([]Curl, error) {
	toks, err := words(cmd)
	if err != nil {
		return nil, err
	}
	var out []Curl
	repeat := 1
	for i := 0; i < len(toks); i++ {
		switch {
		case toks[i] == "for" && i+2 < len(toks) && toks[i+2] == "in":
			n, plain := 0, true
			for j := i + 3; j < len(toks) && toks[j] != ";"; j++ {
				n++
				plain = plain && !strings.ContainsAny(toks[j], "$()")
			}
			if plain {
				repeat = n
			}
		case toks[i] == "curl":
			c, next, err := parseCurl(toks, i+1)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", cmd, err)
			}
			c.Repeat = repeat
			out = append(out, c)
			i = next - 1
		}
	}
	return out, nil
}

// parseCurl reads curl's arguments from toks[i:] and the pipeline after
// them; it returns the index after the last token it used.
func parseCurl(toks []string, i int) (Curl, int, error) {
	c := Curl{Method: "GET"}
	var raw string
	for ; i < len(toks) && !isOperator(toks[i]); i++ {
		t := toks[i]
		switch {
		case t == "-X" && i+1 < len(toks):
			i++
			c.Method = toks[i]
		case (t == "-d" || t == "--data") && i+1 < len(toks):
			i++
			c.Body = toks[i]
			if c.Method == "GET" {
				c.Method = "POST"
			}
		case strings.HasPrefix(t, "-") && strings.Trim(t[1:], "si") == "":
			c.Include = c.Include || strings.Contains(t, "i")
		case strings.HasPrefix(t, "-"):
			return c, i, fmt.Errorf("curl flag %s is not one the doc tests replay (-s, -i, -X, -d)", t)
		case raw == "":
			raw = t
		default:
			return c, i, fmt.Errorf("curl with a second URL %q", t)
		}
	}
	if raw == "" {
		return c, i, fmt.Errorf("curl without a URL")
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return c, i, err
	}
	c.URL = u
	for i < len(toks) && toks[i] == "|" {
		j := i + 1
		for j < len(toks) && !isOperator(toks[j]) {
			j++
		}
		c.Pipe = append(c.Pipe, toks[i+1:j])
		i = j
	}
	return c, i, nil
}

func isOperator(t string) bool {
	switch t {
	case "|", ";", "&", "&&", "||", "(", ")":
		return true
	}
	return false
}

// words splits a shell command into words and operators, with single and
// double quotes and backslash escapes; a "#" that starts a word starts a
// comment.
func words(cmd string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			out = append(out, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(cmd); i++ {
		ch := cmd[i]
		switch {
		case ch == ' ' || ch == '\t':
			flush()
		case ch == '#' && !inWord:
			flush()
			return out, nil
		case ch == '\'':
			j := strings.IndexByte(cmd[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unclosed ' in %s", cmd)
			}
			cur.WriteString(cmd[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case ch == '"':
			j := i + 1
			for ; j < len(cmd) && cmd[j] != '"'; j++ {
				if cmd[j] == '\\' && j+1 < len(cmd) {
					j++
				}
				cur.WriteByte(cmd[j])
			}
			if j == len(cmd) {
				return nil, fmt.Errorf("unclosed \" in %s", cmd)
			}
			inWord = true
			i = j
		case ch == '\\' && i+1 < len(cmd):
			i++
			cur.WriteByte(cmd[i])
			inWord = true
		case strings.IndexByte("|;&()", ch) >= 0 && !(ch == '(' && inWord && strings.HasSuffix(cur.String(), "$")):
			flush()
			op := string(ch)
			if (ch == '&' || ch == '|') && i+1 < len(cmd) && cmd[i+1] == ch {
				op += string(ch)
				i++
			}
			out = append(out, op)
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	flush()
	return out, nil
}

// Where a curl goes, by the port the pages use for it.
const (
	TargetAdmin = "admin" // 2019 (2029: a second instance): the admin endpoint
	TargetSite  = "site"  // 8080: the site of the Caddyfile before the command
	TargetDemo  = "demo"  // 3030, the demo's site, and 9001-9003, its backends
)

// Target says which of the targets a curl goes to; "" for none.
func (c Curl) Target() string {
	switch c.URL.Port() {
	case "2019", "2029":
		return TargetAdmin
	case "8080":
		return TargetSite
	case "3030", "9001", "9002", "9003":
		return TargetDemo
	}
	return ""
}
