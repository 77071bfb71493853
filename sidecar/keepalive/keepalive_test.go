package keepalive_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/keepalive"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// memStore holds token records with check-and-set writes, as store.Tokens does.
type memStore struct {
	mu   sync.Mutex
	toks map[string]project.Token
}

func (m *memStore) Token(_ context.Context, name string) (project.Token, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.toks[name]
	if !ok {
		return project.Token{}, store.ErrNotFound
	}
	return t, nil
}

func (m *memStore) PutToken(_ context.Context, name string, t project.Token) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.toks[name].Version != t.Version {
		return 0, store.ErrConflict
	}
	t.Version++
	m.toks[name] = t
	return t.Version, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSweepRefreshesIdleGrants: with a fake clock, an OAuth project whose record has not changed
// for the keep-alive interval has its refresh token redeemed at the identity provider (and the
// rotated one written back); a project refreshed recently, a client-credentials project and one
// that needs re-authorisation are left alone; a second sweep right after finds nothing due.
func TestSweepRefreshesIdleGrants(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	idp := oauthtest.New(t, oauthtest.Options{Now: c.Now})
	st := &memStore{toks: map[string]project.Token{}}
	oauthProject := func(name, grant string) project.Project {
		return project.Project{Name: name, Enabled: true, Auth: project.Auth{
			Type: project.AuthOAuth2, Username: name + "@example.com", OAuth: idp.OAuth(grant, "openid", "email", "offline_access")}}
	}
	seed := func(name string, updated time.Time, state project.TokenState) {
		g := idp.Grant(name + "@example.com")
		expiry := g.Expiry
		if name == "idle-unexpired" {
			expiry = updated.Add(365 * 24 * time.Hour) // a token still valid: the refresh is forced
		}
		if _, err := st.PutToken(context.Background(), name, project.Token{
			AccessToken: secret.New(g.AccessToken), TokenType: "Bearer", Expiry: expiry, RefreshToken: secret.New(g.RefreshToken),
			Account: name + "@example.com", State: state, UpdatedAt: updated,
		}); err != nil {
			t.Fatal(err)
		}
	}
	projects := []project.Project{
		oauthProject("idle", ""), oauthProject("idle-unexpired", "device_code"), oauthProject("busy", ""), oauthProject("app", "client_credentials"), oauthProject("dead", ""),
		{Name: "basic", Enabled: true, Auth: project.Auth{Type: project.AuthBasic}},
	}
	// Ten days of the fake clock pass; "busy" refreshed yesterday.
	seed("idle", c.Now(), project.TokenOK)
	seed("idle-unexpired", c.Now(), project.TokenOK)
	seed("dead", c.Now(), project.TokenNeedsReauth)
	seed("app", c.Now(), project.TokenOK)
	c.Add(10 * 24 * time.Hour)
	seed("busy", c.Now().Add(-24*time.Hour), project.TokenOK)
	before := map[string]project.Token{"idle": st.toks["idle"], "idle-unexpired": st.toks["idle-unexpired"]}
	requestsBefore := idp.Requests()

	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	broker := token.New(token.Options{Store: st, Now: c.Now, Instance: "it", Logger: log})
	t.Cleanup(broker.Close)
	k, err := keepalive.New(keepalive.Options{
		Projects: func() []project.Project { return projects }, Tokens: st, Refresher: broker,
		Interval: 7 * 24 * time.Hour, Concurrency: 2, Now: c.Now, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}

	res := k.Sweep(context.Background())
	if res != (keepalive.Result{Due: 2, Refreshed: 2}) {
		t.Fatalf("first sweep: %+v, want the two idle projects refreshed", res)
	}
	for name, b := range before {
		after := st.toks[name]
		if after.RefreshToken.Equal(b.RefreshToken) || !after.UpdatedAt.Equal(c.Now()) || after.RefreshedBy != "it" {
			t.Errorf("%s: the record was not refreshed: updated %s by %q, refresh token rotated: %v",
				name, after.UpdatedAt, after.RefreshedBy, !after.RefreshToken.Equal(b.RefreshToken))
		}
		if strings.Contains(logs.String(), b.RefreshToken.Reveal()) || strings.Contains(logs.String(), after.AccessToken.Reveal()) {
			t.Error("a token reached the log")
		}
	}
	if n := idp.Requests() - requestsBefore; n != 2 {
		t.Errorf("the identity provider got %d requests, want 2 refreshes (one per idle project)", n)
	}
	if !strings.Contains(logs.String(), "keep-alive: refreshed an idle grant") || !strings.Contains(logs.String(), "project=idle") {
		t.Errorf("the log does not say which project was kept alive:\n%s", logs.String())
	}

	c.Add(time.Hour)
	if res := k.Sweep(context.Background()); res != (keepalive.Result{}) {
		t.Errorf("second sweep an hour later: %+v, want nothing due", res)
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := keepalive.New(keepalive.Options{Interval: -1})
	for _, want := range []string{"Projects", "Tokens", "Refresher", "negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v, want it to name %s", err, want)
		}
	}
}
