package leastconn

// Stored values come from whatever shares the storage: any bytes must give
// a change lbpool could have written, or an error, never a panic. The seeds
// run with every `go test`; .ci/run fuzzes further.

import (
	"encoding/json"
	"testing"
)

func FuzzParseStoredChange(f *testing.F) {
	for _, seed := range []struct{ field, data string }{
		{fieldState, `{"pool":"web","backend":"http://127.0.0.1:9001","state":"drain","at":"2025-01-02T03:04:05.123456789Z","instance":"a"}`},
		{fieldWeight, `{"pool":"web","backend":"http://127.0.0.1:9001","weight":5,"at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldWeight, `{"pool":"web","backend":"b","weight":null,"at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldWeight, `{"pool":"web","weight":0,"at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldWeight, `{"pool":"web","weight":10001,"at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldState, `{"pool":"web","state":"drain","weight":3,"at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldState, `{"pool":"web","state":"sideways","at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldState, `{"pool":"web","state":"drain","instance":"a"}`},
		{fieldState, `{"pool":"web","state":"drain","at":"yesterday","instance":"a"}`},
		{"other", `{"pool":"web","state":"drain","at":"2025-01-02T03:04:05Z","instance":"a"}`},
		{fieldState, `{} {}`},
		{fieldState, `null`},
		{fieldState, "\x00\xff"},
		{fieldState, ``},
	} {
		f.Add(seed.field, []byte(seed.data))
	}
	f.Fuzz(func(t *testing.T, field string, data []byte) {
		c, err := parseStoredChange(field, data)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%q: an error without a message", data)
			}
			return
		}
		if c.Pool == "" || c.Instance == "" || c.At.IsZero() {
			t.Fatalf("%q parsed without a required field: %+v", data, c)
		}
		switch field {
		case fieldState:
			if c.Weight != nil || (c.State != StateReady && c.State != StateDrain && c.State != StateMaint) {
				t.Fatalf("%q: a state key gave %+v", data, c)
			}
		case fieldWeight:
			if c.State != "" || (c.Weight != nil && (*c.Weight < 1 || *c.Weight > MaxWeight)) {
				t.Fatalf("%q: a weight key gave %+v", data, c)
			}
		default:
			t.Fatalf("field %q accepted", field)
		}
		// what lbpool writes for it reads back the same
		again, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseStoredChange(field, again)
		if err != nil || !back.At.Equal(c.At) || back.State != c.State || back.Instance != c.Instance || back.Pool != c.Pool ||
			(back.Weight == nil) != (c.Weight == nil) || (c.Weight != nil && *back.Weight != *c.Weight) {
			t.Fatalf("%q → %+v → %s → %+v (%v)", data, c, again, back, err)
		}
	})
}
