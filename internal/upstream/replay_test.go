package upstream

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

// replayOf is a Replay of a client body read from src.
func replayOf(src io.Reader) (*Replay, *RequestBody) {
	body := new(RequestBody)
	body.Reset(io.NopCloser(src))
	r := new(Replay)
	r.Reset(body)
	return r, body
}

func TestReplayGivesEachTryTheWholeBody(t *testing.T) {
	want := bytes.Repeat([]byte("grpc"), 1000)
	r, _ := replayOf(bytes.NewReader(want))
	first := r.Reader()
	half := make([]byte, 1500)
	if _, err := io.ReadFull(first, half); err != nil {
		t.Fatal(err)
	}
	if !r.Replayable() {
		t.Fatal("1500 bytes read: not replayable")
	}
	again, err := r.GetBody() // the Transport's own new try
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(again)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the second try read %d bytes (%v), want the %d of the body", len(got), err, len(want))
	}
	if _, err := r.GetBody(); !errors.Is(err, ErrRefusedAgain) {
		t.Fatalf("a second GetBody within a try: %v, want ErrRefusedAgain", err)
	}
	third, err := io.ReadAll(r.Reader()) // lbpool's next try
	if err != nil || !bytes.Equal(third, want) {
		t.Fatalf("the next try read %d bytes (%v)", len(third), err)
	}
}

func TestReplayTakesWhatAStaleReaderWasWaitingFor(t *testing.T) {
	pr, pw := io.Pipe()
	r, _ := replayOf(pr)
	stale := r.Reader()
	go func() { _, _ = pw.Write([]byte("one")) }()
	buf := make([]byte, 10)
	if n, err := stale.Read(buf); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("first read: %q, %v", buf[:n], err)
	}
	// the refused try's reader waits for the client's next message
	go func() { _, _ = stale.Read(make([]byte, 10)) }()
	time.Sleep(10 * time.Millisecond)
	fresh := r.Reader()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(fresh)
		got <- string(b)
	}()
	_, _ = pw.Write([]byte("two"))
	pw.Close()
	select {
	case s := <-got:
		if s != "onetwo" {
			t.Fatalf("the new try read %q, want onetwo", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new try never finished reading")
	}
}

func TestReplayPastTheLimitIsNotSentAgain(t *testing.T) {
	r, _ := replayOf(bytes.NewReader(make([]byte, ReplayLimit+1)))
	if _, err := io.Copy(io.Discard, r.Reader()); err != nil {
		t.Fatal(err)
	}
	if r.Replayable() {
		t.Fatal("a body larger than the limit, read whole, is replayable")
	}
	if _, err := r.GetBody(); !errors.Is(err, ErrNotKept) {
		t.Fatalf("GetBody: %v, want ErrNotKept", err)
	}
}

func TestReplayOfABodyReadElsewhereIsNotReplayable(t *testing.T) {
	r, body := replayOf(bytes.NewReader([]byte("abc")))
	if _, err := body.Read(make([]byte, 1)); err != nil { // the direct path took a byte
		t.Fatal(err)
	}
	if r.Replayable() {
		t.Fatal("replayable after a byte was read past it")
	}
}
