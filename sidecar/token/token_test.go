package token_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/xoauth2"
)

// clock is an injected clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// memStore is store.Tokens in memory, with the failures and instrumentation the tests need.
type memStore struct {
	mu      sync.Mutex
	recs    map[string]project.Token
	down    bool
	hang    bool // calls wait for their context to end, as with a server that stopped answering
	reads   int
	events  []string
	secrets []string
	// beforePut, if set, runs (outside the lock) before every PutToken.
	beforePut func(t project.Token)
}

func newMemStore() *memStore { return &memStore{recs: make(map[string]project.Token)} }

var errDown = errors.New("store unreachable: connection refused")

func (s *memStore) Token(ctx context.Context, name string) (project.Token, error) {
	if err := s.wait(ctx); err != nil {
		return project.Token{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.down {
		return project.Token{}, errDown
	}
	t, ok := s.recs[name]
	if !ok {
		return project.Token{}, store.ErrNotFound
	}
	return t, nil
}

func (s *memStore) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	if err := s.wait(ctx); err != nil {
		return 0, err
	}
	s.mu.Lock()
	hook := s.beforePut
	s.mu.Unlock()
	if hook != nil {
		hook(t)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return 0, errDown
	}
	cur, ok := s.recs[name]
	if (!ok && t.Version != 0) || (ok && cur.Version != t.Version) {
		return 0, store.ErrConflict
	}
	t.Version = cur.Version + 1
	s.recs[name] = t
	if t.RefreshingBy != "" {
		s.events = append(s.events, "claim by "+t.RefreshingBy)
	} else {
		s.events = append(s.events, "put "+t.AccessToken.Reveal())
	}
	s.secrets = append(s.secrets, t.AccessToken.Reveal(), t.RefreshToken.Reveal())
	return t.Version, nil
}

// wait blocks while the store hangs, until ctx ends.
func (s *memStore) wait(ctx context.Context) error {
	for {
		s.mu.Lock()
		hang := s.hang
		s.mu.Unlock()
		if !hang {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (s *memStore) setHang(hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang = hang
}

func (s *memStore) get(name string) project.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recs[name]
}

func (s *memStore) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

func (s *memStore) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

func (s *memStore) event(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

type fixture struct {
	clock *clock
	idp   *oauthtest.Server
	store *memStore
	p     project.Project
	logs  *syncBuffer
	seed  project.Token
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

const (
	projectName = "acme"
	mailbox     = "noreply@acme.example"
)

// newFixture starts an identity provider and a store holding a grant whose access token expires
// after lifetime (from the fixture's clock).
func newFixture(t *testing.T, idpOpts oauthtest.Options, lifetime time.Duration) *fixture {
	t.Helper()
	c := newClock()
	if idpOpts.AccessTokenSize == 0 {
		idpOpts.AccessTokenSize = 2048
	}
	idpOpts.Now = c.Now
	idp := oauthtest.New(t, idpOpts)
	g := idp.Grant(mailbox)
	seed := project.Token{
		AccessToken: secret.New(g.AccessToken), TokenType: "Bearer", Expiry: c.Now().Add(lifetime),
		RefreshToken: secret.New(g.RefreshToken), Account: mailbox, State: project.TokenOK,
	}
	st := newMemStore()
	if _, err := st.PutToken(context.Background(), projectName, seed); err != nil {
		t.Fatal(err)
	}
	st.events = nil
	seed.Version = 1
	return &fixture{
		clock: c, idp: idp, store: st, logs: &syncBuffer{}, seed: seed,
		p: project.Project{
			Name: projectName, Enabled: true,
			Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: idp.OAuth("", "openid", "email", "offline_access")},
		},
	}
}

func (f *fixture) broker(t *testing.T, instance string) *token.Broker {
	t.Helper()
	b := token.New(token.Options{
		Store:    f.store,
		Logger:   slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:      f.clock.Now,
		Instance: instance,
		Backoff:  token.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond},
	})
	t.Cleanup(b.Close)
	return b
}

func mustRenew(t *testing.T, b *token.Broker, p project.Project, refused upstream.Auth) upstream.Auth {
	t.Helper()
	a, err := b.Renew(context.Background(), p, refused)
	if err != nil {
		t.Errorf("Renew: %v", err)
	}
	return a
}

func mustCredential(t *testing.T, b *token.Broker, p project.Project) upstream.Auth {
	t.Helper()
	a, err := b.Credential(context.Background(), p)
	if err != nil {
		t.Fatalf("Credential: %v", err)
	}
	return a
}

// recv waits for one value on ch; it fails the test after a generous deadline instead of hanging.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// credentialAsync runs Credential in a goroutine.
func credentialAsync(b *token.Broker, p project.Project) <-chan upstream.Auth {
	ch := make(chan upstream.Auth, 1)
	go func() {
		a, _ := b.Credential(context.Background(), p)
		ch <- a
	}()
	return ch
}

// waitFor polls cond until it holds; it fails the test after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCredentialShape(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	a := mustCredential(t, b, f.p)
	if a.Mechanism != "XOAUTH2" || a.Username != mailbox || !a.Secret.Equal(f.seed.AccessToken) || a.SASL == nil {
		t.Fatalf("auth = %+v", a)
	}
	c := a.SASL()
	c.Start()
	resp, err := c.Next(nil)
	if err != nil || !bytes.Equal(resp, xoauth2.Response(mailbox, f.seed.AccessToken)) {
		t.Fatalf("SASL response wrong (err %v)", err)
	}
	if _, err := b.Credential(context.Background(), project.Project{Name: "basic", Auth: project.Auth{Type: project.AuthBasic}}); err == nil {
		t.Fatal("a basic project got a credential")
	}
}

func TestNoRefreshWhileFresh(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	first := mustCredential(t, b, f.p)
	reads := f.store.readCount()
	if reads != 1 {
		t.Fatalf("the first Credential read the store %d times, want 1", reads)
	}
	for range 50 {
		f.clock.Advance(time.Minute / 2) // 25 minutes in all: still 35 minutes from expiry
		a := mustCredential(t, b, f.p)
		if !a.Secret.Equal(first.Secret) {
			t.Fatal("token changed while fresh")
		}
	}
	if got := f.store.readCount(); got != reads {
		t.Fatalf("store read %d more times for a fresh token", got-reads)
	}
	if n := f.idp.Requests(); n != 0 {
		t.Fatalf("%d token requests for a fresh token", n)
	}
	if s := b.Status(projectName); s.State != project.TokenOK || s.Account != mailbox || !s.Expiry.Equal(f.seed.Expiry) {
		t.Fatalf("status = %+v", s)
	}
}

func TestBackgroundRefreshAheadOfMargin(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	old := mustCredential(t, b, f.p)

	f.clock.Advance(55 * time.Minute) // 5 minutes left: within the 10-minute margin, still valid
	arrived, release := f.idp.Block()
	defer release()
	for i := range 20 {
		// Every caller returns at once with the still-valid token while the refresh is held at the
		// identity provider: none of them waits for it.
		a := mustCredential(t, b, f.p)
		if !a.Secret.Equal(old.Secret) {
			t.Fatalf("caller %d got another token while the refresh is blocked", i)
		}
	}
	recv(t, arrived, "the background refresh at the identity provider")
	if !b.Status(projectName).Refreshing {
		t.Fatal("no refresh in flight")
	}
	if n := f.idp.RequestsOf("refresh_token"); n != 1 {
		t.Fatalf("%d refresh requests, want 1", n)
	}
	if n := b.RefreshWaits(); n != 0 {
		t.Fatalf("%d callers waited for the background refresh, want 0", n)
	}
	release()
	waitFor(t, "the background refresh", func() bool { return !b.Status(projectName).Refreshing })

	a := mustCredential(t, b, f.p)
	if a.Secret.Equal(old.Secret) {
		t.Fatal("the token was not replaced")
	}
	if _, ok := f.idp.Valid(a.Secret.Reveal()); !ok {
		t.Fatal("the new token is not one the identity provider issued")
	}
	if n := f.idp.Requests(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
	rec := f.store.get(projectName)
	// Version 2 was the claim on the refresh, 3 the new token.
	if !rec.AccessToken.Equal(a.Secret) || rec.RefreshToken.Equal(f.seed.RefreshToken) || rec.RefreshedBy != "a" || rec.Version != 3 || rec.RefreshingBy != "" {
		t.Fatalf("store record not updated: version %d, refreshed by %q", rec.Version, rec.RefreshedBy)
	}
	if !rec.Expiry.Equal(f.clock.Now().Add(time.Hour)) {
		t.Fatalf("expiry %v, want an hour from the injected clock", rec.Expiry)
	}
}

func TestSingleFlight(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, -time.Minute) // already expired
	b := f.broker(t, "a")

	arrived, release := f.idp.Block()
	var wg sync.WaitGroup
	got := make([]upstream.Auth, 100)
	errs := make([]error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = b.Credential(context.Background(), f.p)
		}()
	}
	recv(t, arrived, "the refresh at the identity provider")
	// Release the identity provider only when every caller waits on the one refresh: a caller
	// that arrived after it would find the new token cached and not wait.
	waitFor(t, "100 callers waiting for the refresh", func() bool { return b.Waiting() == 100 })
	release()
	wg.Wait()
	if n := b.Waiting(); n != 0 {
		t.Fatalf("%d callers still counted as waiting after the refresh", n)
	}
	for i := range 100 {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !got[i].Secret.Equal(got[0].Secret) || got[i].Secret.Equal(f.seed.AccessToken) {
			t.Fatalf("caller %d got a different or the expired token", i)
		}
	}
	if n := f.idp.Requests(); n != 1 {
		t.Fatalf("%d token requests for 100 concurrent callers, want 1", n)
	}
	if n := f.store.readCount(); n != 1 {
		t.Fatalf("%d store reads for 100 concurrent callers, want 1 (one shared refresh)", n)
	}
	if n := b.RefreshWaits(); n != 100 {
		t.Fatalf("RefreshWaits = %d: all 100 callers of an expired token waited", n)
	}
}

func TestWriteBeforeUse(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, -time.Minute)
	b := f.broker(t, "a")
	put := make(chan struct{})
	f.store.beforePut = func(t project.Token) {
		if t.RefreshingBy != "" {
			return // the claim on the refresh, before the token request
		}
		put <- struct{}{} // hold the write until the test has looked
		<-put
	}
	done := credentialAsync(b, f.p)

	recv(t, put, "the store write") // the broker is writing: the token endpoint has answered
	if n := f.idp.Requests(); n != 1 {
		t.Fatalf("%d token requests before the write, want 1", n)
	}
	select {
	case <-done:
		t.Fatal("Credential returned before the new record was written")
	default:
	}
	// Another caller meanwhile does not get the new access token either (it waits for the flight).
	other := credentialAsync(b, f.p)
	put <- struct{}{}
	a := recv(t, done, "the first caller")
	f.store.event("handed out " + a.Secret.Reveal())
	o := recv(t, other, "the second caller")
	if !o.Secret.Equal(a.Secret) {
		t.Fatal("the concurrent caller got another token")
	}
	rec := f.store.get(projectName)
	if rec.RefreshToken.Equal(f.seed.RefreshToken) || rec.RefreshToken.IsZero() {
		t.Fatal("the rotated refresh token is not in the store")
	}
	f.store.mu.Lock()
	events := append([]string(nil), f.store.events...)
	f.store.mu.Unlock()
	want := []string{"claim by a", "put " + a.Secret.Reveal(), "handed out " + a.Secret.Reveal()}
	if len(events) != 3 || events[0] != want[0] || events[1] != want[1] || events[2] != want[2] {
		t.Fatalf("order of events is wrong (%d events)", len(events))
	}
}

func TestConflict(t *testing.T) {
	t.Parallel()
	t.Run("another replica claimed the refresh: its token is waited for and used", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, oauthtest.Options{}, -time.Minute)
		a := f.broker(t, "a")
		b2 := f.broker(t, "b")
		rec := f.store.get(projectName)
		rec.RefreshingBy, rec.RefreshingUntil = "b", f.clock.Now().Add(30*time.Second)
		if _, err := f.store.PutToken(context.Background(), projectName, rec); err != nil {
			t.Fatal(err)
		}
		waiting := make(chan upstream.Auth, 1)
		go func() {
			got, err := a.Credential(context.Background(), f.p)
			if err != nil {
				t.Error(err)
			}
			waiting <- got
		}()
		waitFor(t, "broker a to wait on b's claim", func() bool { return f.store.readCount() >= 2 })
		if n := f.idp.Requests(); n != 0 {
			t.Fatalf("broker a redeemed the refresh token under b's claim (%d requests)", n)
		}
		bb := mustCredential(t, b2, f.p)
		got := recv(t, waiting, "broker a")
		if !got.Secret.Equal(bb.Secret) {
			t.Fatal("the replicas use different tokens")
		}
		if n := f.idp.Requests(); n != 1 {
			t.Fatalf("%d token requests, want 1: only the claimer redeems", n)
		}
		if rec := f.store.get(projectName); rec.RefreshedBy != "b" || rec.RefreshingBy != "" {
			t.Fatalf("record refreshed by %q, claim %q", rec.RefreshedBy, rec.RefreshingBy)
		}
	})
	t.Run("a lapsed claim is taken over", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, oauthtest.Options{}, -time.Minute)
		a := f.broker(t, "a")
		rec := f.store.get(projectName)
		rec.RefreshingBy, rec.RefreshingUntil = "crashed", f.clock.Now().Add(-time.Second)
		if _, err := f.store.PutToken(context.Background(), projectName, rec); err != nil {
			t.Fatal(err)
		}
		mustCredential(t, a, f.p)
		if rec := f.store.get(projectName); rec.RefreshedBy != "a" || rec.RefreshingBy != "" {
			t.Fatalf("record refreshed by %q, claim %q", rec.RefreshedBy, rec.RefreshingBy)
		}
	})
	t.Run("another write without a fresh token: the write is retried", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, oauthtest.Options{}, -time.Minute)
		a := f.broker(t, "a")
		var once sync.Once
		f.store.beforePut = func(rec project.Token) {
			if rec.RefreshedBy == "a" && rec.RefreshingBy == "" {
				once.Do(func() {
					cur := f.store.get(projectName)
					cur.UpdatedAt = f.clock.Now()
					if _, err := f.store.PutToken(context.Background(), projectName, cur); err != nil {
						t.Error(err)
					}
				})
			}
		}
		got := mustCredential(t, a, f.p)
		rec := f.store.get(projectName)
		// 1 the seed, 2 a's claim, 3 the other write, 4 a's token written again over it.
		if !rec.AccessToken.Equal(got.Secret) || rec.RefreshedBy != "a" || rec.Version != 4 {
			t.Fatalf("record refreshed by %q at version %d, want a's at 4", rec.RefreshedBy, rec.Version)
		}
	})
}

func TestNeedsReauth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		idp        oauthtest.Options
		setup      func(f *fixture)
		wantReason []string
	}{
		{
			name: "revoked grant",
			setup: func(f *fixture) {
				f.idp.Revoke(mailbox, "AADSTS700082: The refresh token has expired due to inactivity.")
			},
			wantReason: []string{"invalid_grant", "AADSTS700082"},
		},
		{
			name: "bad client secret",
			idp:  oauthtest.Options{ClientSecret: "right"},
			setup: func(f *fixture) {
				f.p.Auth.OAuth.ClientSecret = secret.New("wrong-secret-value")
			},
			wantReason: []string{"client secret", "AADSTS7000215"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, tc.idp, -time.Minute)
			tc.setup(f)
			b := f.broker(t, "a")
			_, err := b.Credential(context.Background(), f.p)
			if !errors.Is(err, credential.ErrNeedsReauth) {
				t.Fatalf("err = %v, want ErrNeedsReauth", err)
			}
			for _, w := range tc.wantReason {
				if !strings.Contains(credential.Reason(err), w) {
					t.Fatalf("reason %q lacks %q", credential.Reason(err), w)
				}
			}
			rec := f.store.get(projectName)
			if rec.State != project.TokenNeedsReauth || !strings.Contains(rec.Reason, tc.wantReason[1]) {
				t.Fatalf("store state %q reason %q", rec.State, rec.Reason)
			}
			if !rec.RefreshToken.Equal(f.seed.RefreshToken) {
				t.Fatal("the refresh token was not kept")
			}
			if s := b.Status(projectName); s.State != project.TokenNeedsReauth || s.Healthy() || !strings.Contains(s.Reason, tc.wantReason[1]) {
				t.Fatalf("status = %+v", s)
			}

			// Asking again soon does not call the identity provider again.
			n := f.idp.Requests()
			if _, err := b.Credential(context.Background(), f.p); !errors.Is(err, credential.ErrNeedsReauth) {
				t.Fatalf("second call: %v", err)
			}
			f.clock.Advance(time.Minute)
			if _, err := b.Renew(context.Background(), f.p, upstream.Auth{}); !errors.Is(err, credential.ErrNeedsReauth) {
				t.Fatalf("after a minute: %v", err)
			}
			if f.idp.Requests() != n {
				t.Fatal("the identity provider was asked again for a grant marked needs_reauth")
			}

			// A new sign-in clears it.
			f.p.Auth.OAuth.ClientSecret = secret.New(f.idp.ClientSecret)
			if err := b.Store(context.Background(), f.p, f.idp.Grant(mailbox), token.SignIn{Account: mailbox}); err != nil {
				t.Fatal(err)
			}
			a := mustCredential(t, b, f.p)
			if _, ok := f.idp.Valid(a.Secret.Reveal()); !ok {
				t.Fatal("not the new sign-in's token")
			}
			if rec := f.store.get(projectName); rec.State != project.TokenOK || rec.Reason != "" {
				t.Fatalf("store state after sign-in %q %q", rec.State, rec.Reason)
			}
			if s := b.Status(projectName); !s.Healthy() {
				t.Fatalf("status after sign-in = %+v", s)
			}
		})
	}
}

func TestNeedsReauthPickedUpFromStore(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, -time.Minute)
	f.idp.Revoke(mailbox, "")
	a := f.broker(t, "a")
	if _, err := a.Credential(context.Background(), f.p); !errors.Is(err, credential.ErrNeedsReauth) {
		t.Fatalf("err = %v", err)
	}
	// The mailbox owner signs in through the other replica.
	b2 := f.broker(t, "b")
	if err := b2.Store(context.Background(), f.p, f.idp.Grant(mailbox), token.SignIn{Account: mailbox}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(31 * time.Second)
	got := mustCredential(t, a, f.p)
	if want := mustCredential(t, b2, f.p); !got.Secret.Equal(want.Secret) {
		t.Fatal("replica a did not pick up the new sign-in")
	}
}

func TestTransient(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	old := mustCredential(t, b, f.p)

	f.clock.Advance(55 * time.Minute)
	f.idp.Fail(1, oauthtest.Failure{Status: 500})
	if a := mustCredential(t, b, f.p); !a.Secret.Equal(old.Secret) {
		t.Fatal("the current token was not served")
	}
	waitFor(t, "the failed refresh", func() bool { return b.Status(projectName).LastError != "" })
	s := b.Status(projectName)
	if !s.RetryAt.After(f.clock.Now()) || s.State != project.TokenOK {
		t.Fatalf("status after a 500 = %+v", s)
	}
	// Backing off: the current token is served and the identity provider is left alone.
	for range 5 {
		if a := mustCredential(t, b, f.p); !a.Secret.Equal(old.Secret) {
			t.Fatal("the current token was not served while backing off")
		}
	}
	if n := f.idp.Requests(); n != 1 {
		t.Fatalf("%d token requests while backing off, want 1", n)
	}
	if rec := f.store.get(projectName); rec.State != project.TokenOK || !rec.RefreshToken.Equal(f.seed.RefreshToken) ||
		!rec.AccessToken.Equal(f.seed.AccessToken) || rec.RefreshingBy != "" {
		t.Fatal("a transient failure changed the token record, or left the claim on the refresh")
	}

	// After the backoff the next call refreshes in the background, successfully.
	f.clock.Advance(time.Second)
	mustCredential(t, b, f.p)
	waitFor(t, "the retried refresh", func() bool { return b.Status(projectName).LastError == "" })
	if a := mustCredential(t, b, f.p); a.Secret.Equal(old.Secret) {
		t.Fatal("the token was not refreshed after the backoff")
	}
}

func TestTransientWithoutValidToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		failure func(f *fixture)
	}{
		{"500", func(f *fixture) { f.idp.Fail(1, oauthtest.Failure{Status: 500}) }},
		{"503 temporarily_unavailable", func(f *fixture) {
			f.idp.Fail(1, oauthtest.Failure{Status: 503, Code: "temporarily_unavailable", Description: "try later"})
		}},
		{"store unreachable", func(f *fixture) { f.store.setDown(true) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, oauthtest.Options{}, -time.Minute)
			tc.failure(f)
			b := f.broker(t, "a")
			_, err := b.Credential(context.Background(), f.p)
			if !errors.Is(err, token.ErrUnavailable) || errors.Is(err, credential.ErrNeedsReauth) {
				t.Fatalf("err = %v, want ErrUnavailable only", err)
			}
			f.store.setDown(false)
			if rec := f.store.get(projectName); rec.State != project.TokenOK {
				t.Fatalf("store state %q after a transient failure", rec.State)
			}
		})
	}
}

func TestRefreshTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, -time.Minute)
	_, release := f.idp.Block()
	defer release()
	b := token.New(token.Options{Store: f.store, Now: f.clock.Now, RefreshTimeout: 100 * time.Millisecond})
	defer b.Close()
	_, err := b.Credential(context.Background(), f.p)
	if !errors.Is(err, token.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

// A store that stops answering (no error, no reply) must not eat the whole refresh: the read and
// the write give up after StoreTimeout, the token is refreshed from memory and kept pending.
func TestStoreHangsDuringRefresh(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := token.New(token.Options{
		Store: f.store, Now: f.clock.Now, Instance: "a",
		RefreshTimeout: 2 * time.Second, StoreTimeout: 100 * time.Millisecond,
		Backoff: token.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond},
	})
	defer b.Close()
	mustCredential(t, b, f.p) // loaded in memory

	f.clock.Advance(time.Hour) // expired
	f.store.setHang(true)
	a := mustCredential(t, b, f.p)
	if a.Secret.Equal(f.seed.AccessToken) {
		t.Fatal("no new token")
	}
	if n := b.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d, want 1", n)
	}
	f.store.setHang(false)
	waitFor(t, "the pending write", func() bool { return b.PendingWrites() == 0 })
	if rec := f.store.get(projectName); !rec.AccessToken.Equal(a.Secret) {
		t.Fatal("the store does not hold the token refreshed while it hung")
	}
}

func TestStoreDownDuringRefresh(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	mustCredential(t, b, f.p) // loaded in memory

	f.clock.Advance(time.Hour) // expired
	f.store.setDown(true)
	a := mustCredential(t, b, f.p)
	if a.Secret.Equal(f.seed.AccessToken) {
		t.Fatal("no new token")
	}
	if n := b.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d, want 1", n)
	}
	if !b.Status(projectName).PendingWrite {
		t.Fatal("status does not show the pending write")
	}
	time.Sleep(20 * time.Millisecond) // some retries fail while the store is down
	if n := b.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d while the store is down, want 1", n)
	}
	f.store.setDown(false)
	waitFor(t, "the pending write", func() bool { return b.PendingWrites() == 0 })
	rec := f.store.get(projectName)
	if !rec.AccessToken.Equal(a.Secret) || rec.RefreshToken.Equal(f.seed.RefreshToken) || rec.RefreshToken.IsZero() {
		t.Fatal("the rotated token did not land in the store")
	}
	// The next refresh uses the stored (rotated) refresh token successfully.
	f.clock.Advance(time.Hour)
	next := mustCredential(t, b, f.p)
	if next.Secret.Equal(a.Secret) {
		t.Fatal("no refresh after the write landed")
	}
}

// TestRenew: renewal after a refusal is decided per token, not per clock. A refused token is
// renewed once, right after the last refresh too; a caller refused with a token already replaced
// gets the new one; concurrent callers refused with the same token share one refresh.
func TestRenew(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, time.Hour)
	b := f.broker(t, "a")
	old := mustCredential(t, b, f.p)
	renewed := mustRenew(t, b, f.p, old)
	if renewed.Secret.Equal(old.Secret) || f.idp.Requests() != 1 {
		t.Fatalf("Renew did not refresh (%d requests)", f.idp.Requests())
	}
	if again := mustRenew(t, b, f.p, old); !again.Secret.Equal(renewed.Secret) || f.idp.Requests() != 1 {
		t.Fatal("a second refusal of the same token renewed it again")
	}
	// The renewed token refused at once (the identity provider dropped it): renewed, no waiting.
	third := mustRenew(t, b, f.p, renewed)
	if third.Secret.Equal(renewed.Secret) || f.idp.Requests() != 2 {
		t.Fatalf("a refused fresh token was not renewed (%d requests)", f.idp.Requests())
	}

	const callers = 20
	got := make([]upstream.Auth, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { got[i] = mustRenew(t, b, f.p, third) })
	}
	wg.Wait()
	for _, a := range got {
		if a.Secret.Equal(third.Secret) || !a.Secret.Equal(got[0].Secret) {
			t.Fatal("concurrent renewals of one refused token did not share one new token")
		}
	}
	if f.idp.Requests() != 3 {
		t.Fatalf("%d callers refused with one token made %d refreshes, want 1", callers, f.idp.Requests()-2)
	}

	b.Rejected(context.Background(), f.p, errors.New("535 5.7.3 Authentication unsuccessful"))
	s := b.Status(projectName)
	if s.Healthy() || !strings.Contains(s.Rejected, "5.7.3") {
		t.Fatalf("status after Rejected = %+v", s)
	}
	b.Accepted(context.Background(), f.p)
	if s := b.Status(projectName); !s.Healthy() {
		t.Fatalf("status after Accepted = %+v", s)
	}
}

func TestClientCredentials(t *testing.T) {
	t.Parallel()
	c := newClock()
	idp := oauthtest.New(t, oauthtest.Options{ClientSecret: "app-secret", Now: c.Now})
	st := newMemStore()
	p := project.Project{Name: "app", Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: idp.OAuth("client_credentials", "smtp")}}
	b := token.New(token.Options{Store: st, Now: c.Now})
	defer b.Close()
	first := mustCredential(t, b, p)
	rec := st.get("app")
	if !rec.AccessToken.Equal(first.Secret) || !rec.RefreshToken.IsZero() || rec.Version != 1 {
		t.Fatalf("stored client credentials record: version %d, has refresh token %v", rec.Version, !rec.RefreshToken.IsZero())
	}
	mustCredential(t, b, p)
	if n := idp.RequestsOf("client_credentials"); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
	c.Advance(2 * time.Hour)
	if next := mustCredential(t, b, p); next.Secret.Equal(first.Secret) || idp.RequestsOf("client_credentials") != 2 {
		t.Fatal("an expired client credentials token was not re-requested")
	}
}

func TestNotSignedIn(t *testing.T) {
	t.Parallel()
	idp := oauthtest.New(t, oauthtest.Options{})
	b := token.New(token.Options{Store: newMemStore()})
	defer b.Close()
	p := project.Project{Name: "new", Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: idp.OAuth("")}}
	_, err := b.Credential(context.Background(), p)
	if !errors.Is(err, credential.ErrNeedsReauth) || !strings.Contains(err.Error(), "not been signed in") {
		t.Fatalf("err = %v", err)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	b := token.Backoff{Min: time.Second, Max: 5 * time.Minute}
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {9, 256 * time.Second}, {10, 5 * time.Minute}, {100, 5 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.failures), func(t *testing.T) {
			if got := b.Delay(tc.failures); got != tc.want {
				t.Fatalf("Delay(%d) = %v, want %v", tc.failures, got, tc.want)
			}
		})
	}
	if got := (token.Backoff{}).Delay(1); got != time.Second {
		t.Fatalf("zero Backoff Delay(1) = %v", got)
	}
}

// TestNoSecretsInLogsOrErrors runs the broker through success, rotation, failures and store
// outages and looks for every token value in the log output and the error strings.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{ClientSecret: "client-secret-value-1234"}, -time.Minute)
	b := f.broker(t, "a")
	var errs []string
	var handed []string
	note := func(a upstream.Auth, err error) {
		if err != nil {
			errs = append(errs, err.Error(), fmt.Sprintf("%+v %#v", err, err))
		} else {
			handed = append(handed, a.Secret.Reveal())
			errs = append(errs, fmt.Sprintf("%v %+v", a, a))
		}
	}
	note(b.Credential(context.Background(), f.p)) // refresh
	f.clock.Advance(55 * time.Minute)
	f.idp.Fail(1, oauthtest.Failure{Status: 500, Code: "server_error", Description: "boom"})
	note(b.Credential(context.Background(), f.p)) // background refresh fails
	waitFor(t, "the failed refresh", func() bool { return b.Status(projectName).LastError != "" })
	f.clock.Advance(10 * time.Minute)
	f.store.setDown(true)
	note(b.Credential(context.Background(), f.p)) // refresh with the store down
	f.store.setDown(false)
	waitFor(t, "the pending write", func() bool { return b.PendingWrites() == 0 })
	f.clock.Advance(2 * time.Hour)
	f.idp.Revoke(mailbox, "")
	note(b.Credential(context.Background(), f.p)) // needs_reauth
	bad := f.p
	o := *bad.Auth.OAuth
	o.ClientSecret = secret.New("wrong-client-secret-5678")
	bad.Auth.OAuth = &o
	bad.Name = "other"
	otherSeed := f.seed
	otherSeed.Version = 0
	if _, err := f.store.PutToken(context.Background(), "other", otherSeed); err != nil {
		t.Fatal(err)
	}
	note(b.Credential(context.Background(), bad)) // bad client
	errs = append(errs, fmt.Sprintf("%+v %+v", b.Status(projectName), b.Status("other")))

	f.store.mu.Lock()
	values := append(append([]string{}, f.store.secrets...), handed...)
	f.store.mu.Unlock()
	values = append(values, f.seed.AccessToken.Reveal(), f.seed.RefreshToken.Reveal(), "client-secret-value-1234", "wrong-client-secret-5678")
	logs := f.logs.String()
	if !strings.Contains(logs, "refreshed the access token") || !strings.Contains(logs, `"kind":"needs_reauth"`) ||
		!strings.Contains(logs, `"kind":"bad_client"`) || !strings.Contains(logs, "the pending token record") {
		t.Fatalf("the log is missing expected entries:\n%s", logs)
	}
	all := logs + strings.Join(errs, "\n")
	checked := 0
	for _, v := range values {
		if v == "" {
			continue
		}
		checked++
		if strings.Contains(all, v) {
			t.Fatalf("a secret value (%d octets) appears in the logs or errors", len(v))
		}
	}
	if checked < 8 {
		t.Fatalf("only %d secret values checked", checked)
	}
}

func TestStoreSignInWhileStoreDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, -time.Minute)
	b := f.broker(t, "a")
	f.store.setDown(true)
	g := f.idp.Grant(mailbox)
	if err := b.Store(context.Background(), f.p, g, token.SignIn{Account: mailbox}); err == nil || !strings.Contains(err.Error(), "kept in memory") {
		t.Fatalf("Store with the store down: %v", err)
	}
	if b.PendingWrites() != 1 {
		t.Fatal("the sign-in is not pending")
	}
	if a := mustCredential(t, b, f.p); a.Secret.Reveal() != g.AccessToken {
		t.Fatal("the new sign-in's token is not served from memory")
	}
	f.store.setDown(false)
	waitFor(t, "the pending sign-in write", func() bool { return b.PendingWrites() == 0 })
	if rec := f.store.get(projectName); rec.RefreshToken.Reveal() != g.RefreshToken || rec.Account != mailbox || rec.Version != 2 {
		t.Fatalf("stored sign-in: version %d account %q", rec.Version, rec.Account)
	}
}

// A restarted Postern knows a stored needs_reauth, or a mailbox never signed in, before any
// delivery tries: the milter and the status page ask Observe first. It reads the store once and
// never calls the identity provider.
func TestObserveStoredState(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		record     func(f *fixture)
		wantState  project.TokenState
		wantReason string
	}{
		{"ok", func(*fixture) {}, project.TokenOK, ""},
		{"needs reauth", func(f *fixture) {
			r := f.store.get(projectName)
			r.State, r.Reason = project.TokenNeedsReauth, "invalid_grant: AADSTS700082 expired"
			if _, err := f.store.PutToken(context.Background(), projectName, r); err != nil {
				t.Fatal(err)
			}
		}, project.TokenNeedsReauth, "AADSTS700082"},
		{"never signed in", func(f *fixture) {
			f.store.mu.Lock()
			delete(f.store.recs, projectName)
			f.store.mu.Unlock()
		}, project.TokenNeedsReauth, "not been signed in"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, oauthtest.Options{}, time.Hour)
			c.record(f)
			b := f.broker(t, "a")
			if s := b.Status(projectName); s.State != "" {
				t.Fatalf("state known before Observe: %+v", s)
			}
			reads := f.store.readCount()
			for range 3 {
				if err := b.Observe(context.Background(), f.p); err != nil {
					t.Fatal(err)
				}
			}
			s := b.Status(projectName)
			if s.State != c.wantState || !strings.Contains(s.Reason, c.wantReason) {
				t.Fatalf("status %+v, want %s %q", s, c.wantState, c.wantReason)
			}
			if got := f.store.readCount() - reads; got != 1 {
				t.Fatalf("%d store reads for three Observes, want 1", got)
			}
			if n := f.idp.Requests(); n != 0 {
				t.Fatalf("Observe called the identity provider %d times", n)
			}
			_, err := b.Credential(context.Background(), f.p)
			if (c.wantState == project.TokenNeedsReauth) != errors.Is(err, credential.ErrNeedsReauth) {
				t.Fatalf("Credential after Observe: %v", err)
			}
		})
	}
}

// A token living less than the margin (50 s against the default 10 minutes) is used for half its
// lifetime before it is refreshed: it is not refreshed on every delivery.
func TestShortLivedTokenIsNotRefreshedOnEveryDelivery(t *testing.T) {
	t.Parallel()
	f := newFixture(t, oauthtest.Options{}, 50*time.Second)
	rec := f.seed
	rec.UpdatedAt = f.clock.Now()
	if _, err := f.store.PutToken(context.Background(), projectName, rec); err != nil {
		t.Fatal(err)
	}
	b := f.broker(t, "a")
	for range 10 {
		f.clock.Advance(2 * time.Second) // 20 s in all: within the first half of its life
		if a := mustCredential(t, b, f.p); !a.Secret.Equal(f.seed.AccessToken) {
			t.Fatal("the short-lived token was replaced within the first half of its life")
		}
	}
	if n := f.idp.Requests(); n != 0 {
		t.Fatalf("%d token requests for a token in the first half of its 50 s life, want 0", n)
	}
	f.clock.Advance(10 * time.Second) // 30 s: past half its life, refreshed ahead of expiry
	mustCredential(t, b, f.p)
	waitFor(t, "a refresh past half the token's life", func() bool { return f.idp.Requests() == 1 })
}
