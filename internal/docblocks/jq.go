package docblocks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// JQ applies the part of jq the pages use to a JSON document: ".", ".[N]",
// ".[]" and "{a, b}", joined by "|". Each result is indented as jq prints
// it, keys in their order.
func JQ(doc []byte, filter string) ([]string, error) {
	values := []json.RawMessage{json.RawMessage(doc)}
	for _, step := range strings.Split(filter, "|") {
		var next []json.RawMessage
		for _, v := range values {
			out, err := jqStep(v, strings.TrimSpace(step))
			if err != nil {
				return nil, fmt.Errorf("jq %q: %v", filter, err)
			}
			next = append(next, out...)
		}
		values = next
	}
	var out []string
	for _, v := range values {
		var b bytes.Buffer
		if err := json.Indent(&b, v, "", "  "); err != nil {
			return nil, err
		}
		out = append(out, b.String())
	}
	return out, nil
}

func jqStep(v json.RawMessage, step string) ([]json.RawMessage, error) {
	switch {
	case step == "" || step == ".":
		return []json.RawMessage{v}, nil
	case step == ".[]":
		var items []json.RawMessage
		err := json.Unmarshal(v, &items)
		return items, err
	case strings.HasPrefix(step, ".[") && strings.HasSuffix(step, "]"):
		n, err := strconv.Atoi(step[2 : len(step)-1])
		if err != nil {
			return nil, fmt.Errorf("index %s", step)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(v, &items); err != nil {
			return nil, err
		}
		if n < 0 || n >= len(items) {
			return []json.RawMessage{json.RawMessage("null")}, nil
		}
		return []json.RawMessage{items[n]}, nil
	case strings.HasPrefix(step, "{") && strings.HasSuffix(step, "}"):
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(v, &fields); err != nil {
			return nil, err
		}
		var b bytes.Buffer
		b.WriteByte('{')
		for i, key := range strings.Split(step[1:len(step)-1], ",") {
			key = strings.TrimSpace(key)
			if i > 0 {
				b.WriteByte(',')
			}
			name, _ := json.Marshal(key)
			b.Write(name)
			b.WriteByte(':')
			if val, ok := fields[key]; ok {
				b.Write(val)
			} else {
				b.WriteString("null")
			}
		}
		b.WriteByte('}')
		return []json.RawMessage{b.Bytes()}, nil
	}
	return nil, fmt.Errorf("filter %q is not one the doc tests understand", step)
}

// Keys returns the field names a jq filter's object constructions ask
// for ({a, b}), so a test can check that each is a real field.
func Keys(filter string) []string {
	var out []string
	for _, step := range strings.Split(filter, "|") {
		step = strings.TrimSpace(step)
		if strings.HasPrefix(step, "{") && strings.HasSuffix(step, "}") {
			for _, k := range strings.Split(step[1:len(step)-1], ",") {
				out = append(out, strings.TrimSpace(k))
			}
		}
	}
	return out
}
