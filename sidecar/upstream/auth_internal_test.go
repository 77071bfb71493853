package upstream

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLoginClient(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		challenges []string
		want       []string // responses; "!" for an error
	}{
		{"initial response taken", []string{"Password:"}, []string{"pw"}},
		{"asks for the user first", []string{"Username:", "Password:"}, []string{"user", "pw"}},
		{"unusual wording", []string{"User Name", "Passcode"}, []string{"user", "pw"}},
		{"a third challenge", []string{"Password:", "Password:"}, []string{"pw", "!"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := &loginClient{username: "user", password: "pw"}
			if mech, ir, err := c.Start(); mech != "LOGIN" || string(ir) != "user" || err != nil {
				t.Fatalf("Start() = %q, %q, %v", mech, ir, err)
			}
			for i, ch := range tc.challenges {
				resp, err := c.Next([]byte(ch))
				got := string(resp)
				if err != nil {
					got = "!"
				}
				if got != tc.want[i] {
					t.Errorf("challenge %q: got %q, want %q", ch, got, tc.want[i])
				}
			}
		})
	}
}

func TestTracerRedactsAuth(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	tr := &tracer{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	tr.lines("C", []byte("EHLO relay.example\r\n"))
	tr.setMode(traceAuth)
	tr.lines("C", []byte("AUTH PLAIN AHVzZXIAcGFzc3dvcmQ=\r\n"))
	tr.lines("S", []byte("334 VXNlcm5hbWU6\r\n"))
	tr.lines("C", []byte("cGFzc3dvcmQ=\r\n"))
	tr.setMode(traceBody)
	tr.lines("C", []byte("Subject: private\r\n"))
	tr.lines("S", []byte("250 2.0.0 queued\r\n"))
	out := buf.String()
	for _, leak := range []string{"AHVzZXIAcGFzc3dvcmQ=", "cGFzc3dvcmQ=", "private"} {
		if strings.Contains(out, leak) {
			t.Errorf("trace holds %q:\n%s", leak, out)
		}
	}
	for _, want := range []string{`line="EHLO relay.example"`, `line="AUTH PLAIN [redacted]"`, "line=[redacted]", `line="334 VXNlcm5hbWU6"`, `line="250 2.0.0 queued"`} {
		if !strings.Contains(out, want) {
			t.Errorf("trace lacks %s:\n%s", want, out)
		}
	}
}
