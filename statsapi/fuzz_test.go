package statsapi

// The body of POST /lbpool/state comes from whoever reaches the admin
// endpoint: any bytes must give a request with every field, or a 4xx with
// a JSON error, never a panic; a body over the limit is a 413 whatever it
// holds, and a body that decodes is one JSON value with nothing but
// whitespace after it. The seed corpus (the f.Add calls and
// testdata/fuzz/FuzzStateRequestBody/) runs with every `go test`.

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

func FuzzStateRequestBody(f *testing.F) {
	for _, seed := range []string{
		`{"pool":"web","backend":"127.0.0.1:9002","state":"drain"}`,
		`{"pool":"web","backend":"http://ops:xxxxx@127.0.0.1:9002","state":"ready"}`,
		`{"pool":"fuzz-none","backend":"a:80","state":"maint"}`,
		`{"pool":"fuzz-none","backend":"a:80","state":"off"}`,
		`{"pool":"web","backend":"127.0.0.1:9002","weight":5}`,
		`{"pool":"web","backend":"127.0.0.1:9002","weight":null,"state":"ready"}`,
		`{"pool":"web","backend":"a","weight":0}`,
		`{"pool":"web","backend":"a","weight":1.5}`,
		`{"pool":"web","backend":"a","weight":"3"}`,
		`{"pool":"web","backend":"a","weight":99999999999999999999}`,
		`{"pool":"web","state":"drain"}`,
		`{"pool":"web","backend":"a","state":"drain","x":1}`,
		`{"pool":"web","backend":"a","state":"drain"} {}`,
		`{"pool":"web","backend":"a","state":"drain"}{"pool":"web","backend":"a","state":"ready"}`,
		`{"pool":"web","backend":"a","state":"drain"}  `,
		"{\"pool\":\"web\",\"backend\":\"a\",\"state\":\"drain\"}\r\n\t ",
		`{"pool":"web","backend":"a","state":"drain"} x`,
		`{"pool":"web","backend":"a","state":"drain"}]`,
		`{"pool":"web","backend":"a","state":"drain"}}`,
		"{\"pool\":\"web\",\"backend\":\"a\",\"state\":\"drain\"}\x00",
		"{\"pool\":\"web\",\"backend\":\"a\",\"state\":\"drain\"}\u00a0",
		// at the limit and one byte over it: whitespace after the object
		padTo(`{"pool":"web","backend":"a","state":"drain"}`, maxStateBody),
		padTo(`{"pool":"web","backend":"a","state":"drain"}`, maxStateBody+1),
		`{"Pool":"web","BACKEND":"a","state":"drain"}`,
		`{"pool":1,"backend":"a","state":"drain"}`,
		`{"pool":"\u0000","backend":"\ud800","state":"drain"}`,
		`[]`,
		`null`,
		`{`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeStateRequest(body)
		if err == nil {
			// one JSON value and nothing but whitespace after it
			if !json.Valid(body) {
				t.Fatalf("%q decoded, but it is not one JSON value", body)
			}
			if req.Pool == "" || req.Backend == "" || (req.State == "" && !req.Weight.Set) {
				t.Fatalf("%q decoded without a field: %+v", body, req)
			}
			// what was read is what the client meant: it encodes and reads back the same
			data, _ := json.Marshal(req)
			again, err := decodeStateRequest(data)
			if err != nil || !reflect.DeepEqual(again, req) {
				t.Fatalf("%q read as %+v, which reads back as %+v (%v)", body, req, again, err)
			}
		} else if err.Error() == "" {
			t.Fatalf("%q: an error without a message", body)
		}

		// the whole route: a status docs/admin-api.md names, and the error as JSON
		r := httptest.NewRequest(http.MethodPost, "/lbpool/state", bytes.NewReader(body))
		w := httptest.NewRecorder()
		herr := Admin{}.handleState(w, r)
		var apiErr caddy.APIError
		tooLarge := len(body) > maxStateBody
		switch {
		case tooLarge != (errors.As(herr, &apiErr) && apiErr.HTTPStatus == http.StatusRequestEntityTooLarge):
			t.Fatalf("%d bytes (limit %d): %v", len(body), maxStateBody, herr)
		case herr == nil:
			if w.Code != http.StatusOK || !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%q: %d %q", body, w.Code, w.Body)
			}
		case !errors.As(herr, &apiErr):
			t.Fatalf("%q: an error that is not an API error: %v", body, herr)
		case apiErr.HTTPStatus != http.StatusBadRequest && apiErr.HTTPStatus != http.StatusNotFound &&
			apiErr.HTTPStatus != http.StatusRequestEntityTooLarge:
			t.Fatalf("%q: status %d", body, apiErr.HTTPStatus)
		case err != nil && !tooLarge && apiErr.HTTPStatus != http.StatusBadRequest:
			t.Fatalf("%q: a body that does not decode (%v) answered %d", body, err, apiErr.HTTPStatus)
		case apiErr.Err == nil || apiErr.Err.Error() == "":
			t.Fatalf("%q: status %d without an error message", body, apiErr.HTTPStatus)
		}
	})
}

// padTo is s followed by spaces up to n bytes.
func padTo(s string, n int) string {
	return s + strings.Repeat(" ", n-len(s))
}
