package sidecar

import (
	"encoding/base64"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
	"github.com/postern/postern/sidecar/xoauth2"
)

// The SMTP trace is switched on from the configuration (upstream.trace, upstream.trace_projects)
// and holds no secret: a PLAIN, a LOGIN and an XOAUTH2 sign-in are traced with their AUTH
// exchange redacted, and a project not named in upstream.trace_projects is not traced at all.
func TestTraceFromConfigurationHidesSecrets(t *testing.T) {
	t.Parallel()
	const (
		user     = "noreply@client-a.example"
		password = "pw-Trace-0123456789"
		token    = "at-Trace-0123456789abcdef"
	)
	check := func(u, p string) bool { return u == user && p == password }
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Mechanisms: map[string]upstreamtest.Mechanism{
		"PLAIN":           upstreamtest.PlainMechanism(check),
		"LOGIN":           upstreamtest.LoginMechanism(check),
		xoauth2.Mechanism: upstreamtest.XOAUTH2Mechanism(func(u, tok string) bool { return u == user && tok == token }),
	}})
	quiet := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: map[string]string{user: password}})
	idp := oauthtest.New(t, oauthtest.Options{})

	dir := t.TempDir()
	st, err := boltstore.Open(t.Context(), boltstore.Options{Path: filepath.Join(dir, "store.db"), KeyFile: filepath.Join(dir, "store.key"), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	basic := func(name, mech string, up *upstreamtest.Server) project.Project {
		return project.Project{
			Name: name, Enabled: true, Senders: []string{user}, Upstream: up.Upstream(),
			Auth: project.Auth{Type: project.AuthBasic, Username: user, Password: secret.New(password), Mechanism: mech},
		}
	}
	oauthProject := project.Project{
		Name: "oauth", Enabled: true, Senders: []string{user}, Upstream: srv.Upstream(),
		Auth: project.Auth{Type: project.AuthOAuth2, Username: user, OAuth: idp.OAuth("")},
	}
	if _, err := st.PutToken(t.Context(), oauthProject.Name, project.Token{
		AccessToken: secret.New(token), RefreshToken: secret.New("rt-Trace-0123456789"),
		Expiry: time.Now().Add(time.Hour), UpdatedAt: time.Now(), Account: user, State: project.TokenOK,
	}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		config string
		traced []project.Project
		quiet  []project.Project
	}{
		{
			name:   "trace_projects",
			config: "upstream:\n  trace_projects: [plain, login, oauth]\n",
			traced: []project.Project{basic("plain", "PLAIN", srv), basic("login", "LOGIN", srv), oauthProject},
			quiet:  []project.Project{basic("quiet", "PLAIN", quiet)},
		},
		{
			name:   "trace",
			config: "upstream:\n  trace: true\n",
			traced: []project.Project{basic("plain", "PLAIN", srv), basic("login", "LOGIN", srv), oauthProject},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.config))
			if err != nil {
				t.Fatal(err)
			}
			logs := &lockedBuffer{}
			parts := NewParts(t.Context(), cfg, st, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			defer parts.Close()
			for _, p := range append(tc.traced, tc.quiet...) {
				if err := parts.SignInCheck(t.Context(), p); err != nil {
					t.Fatalf("signing in %s: %v", p.Name, err)
				}
			}
			trace := logs.String()
			for _, want := range []string{`line="AUTH PLAIN [redacted]"`, `line="AUTH LOGIN [redacted]"`, `line="AUTH XOAUTH2 [redacted]"`, "line=[redacted]", "line=STARTTLS"} {
				if !strings.Contains(trace, want) {
					t.Errorf("the trace lacks %s:\n%s", want, trace)
				}
			}
			b64 := base64.StdEncoding.EncodeToString
			secrets := map[string]string{
				"the password":       password,
				"the access token":   token,
				"PLAIN's response":   b64([]byte("\x00" + user + "\x00" + password)),
				"LOGIN's password":   b64([]byte(password)),
				"XOAUTH2's response": b64(xoauth2.Response(user, secret.New(token))),
				"the refresh token":  "rt-Trace-0123456789",
			}
			for what, s := range secrets {
				if strings.Contains(trace, s) {
					t.Errorf("the trace holds %s:\n%s", what, trace)
				}
			}
			for _, p := range tc.quiet {
				for _, line := range strings.Split(trace, "\n") {
					if strings.Contains(line, "msg=smtp") && strings.Contains(line, "upstream="+p.Upstream.Address()+" ") {
						t.Errorf("project %s is traced, though upstream.trace_projects does not name it: %s", p.Name, line)
						break
					}
				}
			}
		})
	}
}
