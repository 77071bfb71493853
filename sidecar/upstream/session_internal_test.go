package upstream

import (
	"io"
	"maps"
	"net"
	"testing"
	"time"
)

// Every state change goes through enter; broken is final and closes the connection.
func TestStateTransitions(t *testing.T) {
	t.Parallel()
	steps := []struct {
		enter state
		want  state
	}{
		{stateTx, stateTx},
		{stateReady, stateReady},
		{stateTx, stateTx},
		{stateBroken, stateBroken},
		{stateReady, stateBroken},
		{stateTx, stateBroken},
	}
	client, server := net.Pipe()
	defer server.Close()
	c := &Conn{nc: client}
	for i, s := range steps {
		c.enter(s.enter)
		if c.state != s.want {
			t.Fatalf("step %d: enter(%v) left %v, want %v", i, s.enter, c.state, s.want)
		}
		if s.want != stateBroken {
			continue
		}
		server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := server.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("step %d: a broken session's connection is open (read: %v)", i, err)
		}
		if e := c.unusable(StageMail); e == nil {
			t.Fatalf("step %d: a broken session is usable", i)
		}
	}
}

func TestParseEHLO(t *testing.T) {
	t.Parallel()
	got := parseEHLO("mx.example greets you\nPIPELINING\nsize 35882577\nAUTH PLAIN LOGIN XOAUTH2\n8BITMIME")
	want := map[string]string{"PIPELINING": "", "SIZE": "35882577", "AUTH": "PLAIN LOGIN XOAUTH2", "8BITMIME": ""}
	if !maps.Equal(got, want) {
		t.Errorf("parseEHLO = %v, want %v", got, want)
	}
	if got := parseEHLO("mx.example"); len(got) != 0 {
		t.Errorf("a one-line EHLO reply offers %v", got)
	}
}
