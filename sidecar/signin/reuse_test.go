package signin_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

// grantCounter is a store that counts the distinct access tokens written: the grants stored.
type grantCounter struct {
	store.Store
	mu     sync.Mutex
	grants map[string]bool
}

func (g *grantCounter) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	v, err := g.Store.PutToken(ctx, name, t)
	if err == nil && !t.AccessToken.IsZero() {
		g.mu.Lock()
		if g.grants == nil {
			g.grants = map[string]bool{}
		}
		g.grants[t.AccessToken.Reveal()] = true
		g.mu.Unlock()
	}
	return v, err
}

func (g *grantCounter) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.grants)
}

// replica is another Postern process over e's store: its own sign-in server and token broker,
// as after a restart or on another host.
func (e *env) replica(st store.Store) *httptest.Server {
	e.t.Helper()
	broker := token.New(token.Options{Store: st, Instance: "replica", Now: e.clock.Now})
	e.t.Cleanup(broker.Close)
	srv, err := signin.New(signin.Options{
		Key: e.key, PublicURL: e.base, Projects: st, Tokens: st, Grants: broker,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil)), Now: e.clock.Now,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	e.t.Cleanup(ts.Close)
	return ts
}

// at moves u (a link or callback URL of e) to the replica ts.
func at(t *testing.T, ts *httptest.Server, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse(ts.URL)
	p.Host = base.Host
	return p.String()
}

// A used link stays used when a newer link was used after it: after a restart, and on another
// replica that never saw either.
func TestUsedLinkAfterNewerLink(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	older, _ := e.link(72 * time.Hour)
	newer, _ := e.link(72 * time.Hour)
	for _, l := range []string{older, newer} {
		b := newBrowser(t)
		if r := b.get(b.authorize(b.press(l))); r.outcome() != signin.OutcomeSignedIn {
			t.Fatalf("signing in: %s\n%s", r.outcome(), r.body)
		}
	}
	restarted := e.replica(e.st)
	for name, l := range map[string]string{"older": older, "newer": newer} {
		r := newBrowser(t).get(at(t, restarted, l))
		if r.outcome() != signin.OutcomeLinkUsed {
			t.Errorf("the %s used link after a restart: %d %s", name, r.code, r.outcome())
		}
	}

	// A flow started with the older link before the newer one was used cannot finish either.
	e2 := newEnv(t, envOptions{})
	older2, _ := e2.link(time.Hour)
	newer2, _ := e2.link(time.Hour)
	b := newBrowser(t)
	first := b.authorize(b.press(older2))
	if r := b.get(b.authorize(b.press(older2))); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("signing in: %s", r.outcome())
	}
	if r := b.get(b.authorize(b.press(newer2))); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("signing in with the newer link: %s", r.outcome())
	}
	if r := b.get(at(t, e2.replica(e2.st), first)); r.outcome() != signin.OutcomeLinkUsed {
		t.Errorf("the older link's second callback on a fresh replica: %s", r.outcome())
	}
}

// Two callbacks of one link, at the same moment on two replicas: one grant is stored, and the
// other browser hears that the link was used.
func TestConcurrentCallbacksOneLink(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	counter := &grantCounter{Store: e.st}
	replicas := []*httptest.Server{e.replica(counter), e.replica(counter)}
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	callbacks := []string{b.authorize(b.press(link)), b.authorize(b.press(link))}

	arrived, release := e.idp.Block()
	outcomes := make([]string, 2)
	var wg sync.WaitGroup
	for i := range callbacks {
		wg.Go(func() { outcomes[i] = b.get(at(t, replicas[i], callbacks[i])).outcome() })
	}
	for range callbacks {
		select {
		case <-arrived:
		case <-t.Context().Done():
			t.Fatal("the code exchanges did not arrive")
		}
	}
	release()
	wg.Wait()

	sort.Strings(outcomes)
	if want := []string{signin.OutcomeLinkUsed, signin.OutcomeSignedIn}; outcomes[0] != want[0] || outcomes[1] != want[1] {
		t.Errorf("outcomes %v, want %v", outcomes, want)
	}
	if n := counter.count(); n != 1 {
		t.Errorf("%d grants stored, want 1", n)
	}
}

// A mailbox that signed in before must sign in as the same account again: another account with
// the same address (another sub) is refused, and nothing is stored.
func TestSignInAsAnotherAccountOfTheMailbox(t *testing.T) {
	t.Parallel()
	var sub atomic.Value
	sub.Store("account-1")
	e := newEnv(t, envOptions{idp: func(o *oauthtest.Options) {
		o.IDClaims = func(string) map[string]any { return map[string]any{"sub": sub.Load()} }
	}})
	first, _ := e.link(time.Hour)
	b := newBrowser(t)
	if r := b.get(b.authorize(b.press(first))); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("first sign-in: %s\n%s", r.outcome(), r.body)
	}
	before, err := e.st.Token(t.Context(), e.p.Name)
	if err != nil || before.AccountID != "account-1" {
		t.Fatalf("token record after the first sign-in: account id %q, %v", before.AccountID, err)
	}

	sub.Store("account-2")
	second, _ := e.link(time.Hour)
	r := b.get(b.authorize(b.press(second)))
	if r.code != 403 || r.outcome() != signin.OutcomeAccountChanged || !strings.Contains(r.body, "Nothing was saved") ||
		!strings.Contains(r.body, "postern authorize --forget client-a") {
		t.Fatalf("another account of the mailbox: %d %s\n%s", r.code, r.outcome(), r.body)
	}
	after, err := e.st.Token(t.Context(), e.p.Name)
	if err != nil || after.Version != before.Version || !after.AccessToken.Equal(before.AccessToken) {
		t.Fatalf("the token record changed: version %d → %d, %v", before.Version, after.Version, err)
	}

	// The account used before signs in again with the same link.
	sub.Store("account-1")
	if r := b.get(b.authorize(b.press(second))); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("the first account again: %s\n%s", r.outcome(), r.body)
	}
}

// A generic provider's email counts only when email_verified is true.
func TestUnverifiedEmail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{idp: func(o *oauthtest.Options) {
		o.IDClaims = func(string) map[string]any { return map[string]any{"email_verified": false} }
	}})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	r := b.get(b.authorize(b.press(link)))
	if r.outcome() != signin.OutcomeAccountUnverified || !strings.Contains(r.text("detail"), "not verified") {
		t.Fatalf("%s %q", r.outcome(), r.text("detail"))
	}
	e.noToken()
}
